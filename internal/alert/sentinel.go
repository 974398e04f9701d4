package alert

import (
	"bytes"
	"encoding/json"
	"strings"
)

// decodeSentinel reads what a Logic App forwards from either Sentinel
// trigger: the incident trigger ({"object": {"id", "properties": {...}}})
// or the alert trigger ({"SystemAlertId", "Entities", ...}).
func decodeSentinel(root node, body []byte, _ Options) ([]Alert, error) {
	m, err := root.object()
	if err != nil {
		return nil, err
	}
	if m == nil {
		return nil, root.typeErr("an object")
	}
	raw := json.RawMessage(bytes.Clone(body))
	var a Alert
	switch {
	case m["object"] != nil:
		a, err = sentinelIncident(root)
	case root.getFold("SystemAlertId").v != nil:
		a, err = sentinelAlert(root)
	default:
		return nil, &FieldError{Field: "object", Msg: "missing: the body is neither a Sentinel incident trigger (object.id) nor an alert trigger (SystemAlertId)"}
	}
	if err != nil {
		return nil, err
	}
	a.Raw = raw
	return []Alert{a}, nil
}

func sentinelIncident(root node) (Alert, error) {
	var r reader
	obj := root.get("object")
	r.object(obj)
	idNode := obj.get("id")
	rawID := r.str(idNode)
	p := obj.get("properties")
	r.object(p)
	ad := p.get("additionalData")
	r.object(ad)
	a := Alert{
		Severity:        normSeverity(nil, r.str(p.get("severity"))),
		Title:           cleanLine(r.str(p.get("title")), MaxTitleLen),
		Description:     cleanText(r.str(p.get("description")), MaxDescriptionLen),
		Status:          cleanLine(r.str(p.get("status")), MaxFieldLen),
		URL:             cleanURL(r.str(p.get("incidentUrl"))),
		Time:            parseTime(r.str(p.get("createdTimeUtc"))),
		MitreTechniques: cleanList(r.strs(ad.get("techniques")), MaxFieldLen),
	}
	if products := r.strs(ad.get("alertProductNames")); len(products) > 0 {
		a.DetectionSource = cleanLine(products[0], MaxFieldLen)
	}
	labels := p.get("labels")
	var tags []string
	for i := range r.array(labels) {
		l := labels.index(i)
		switch l.v.(type) {
		case string:
			tags = append(tags, r.str(l))
		default:
			tags = append(tags, r.str(l.get("labelName")))
			r.object(l)
		}
	}
	a.Tags = cleanList(tags, MaxFieldLen)

	var ds deviceSet
	ents := p.get("relatedEntities")
	for i := range r.array(ents) {
		e := ents.index(i)
		if r.object(e) == nil {
			continue
		}
		kind := r.str(e.getFold("kind"))
		if kind == "" {
			kind = r.str(e.getFold("Type"))
		}
		if !strings.EqualFold(kind, "host") {
			continue
		}
		props := e.getFold("properties")
		if props.v == nil {
			props = e // a flat entity, as "Entities - Get Hosts" gives it
		}
		if r.object(props) == nil {
			continue
		}
		id, dns, aad := sentinelHost(&r, props)
		ds.add(id, dns, aad)
	}
	if r.err != nil {
		return Alert{}, r.err
	}
	id, err := alertID(idNode, rawID)
	if err != nil {
		return Alert{}, err
	}
	a.ID = id
	ds.fill(&a)
	return a, nil
}

func sentinelAlert(root node) (Alert, error) {
	var r reader
	idNode := root.getFold("SystemAlertId")
	rawID := r.str(idNode)
	a := Alert{
		Severity:        normSeverity(nil, r.first(root.getFold("AlertSeverity"), root.getFold("Severity"))),
		Title:           cleanLine(r.first(root.getFold("AlertDisplayName"), root.getFold("AlertName")), MaxTitleLen),
		Description:     cleanText(r.str(root.getFold("Description")), MaxDescriptionLen),
		Status:          cleanLine(r.str(root.getFold("Status")), MaxFieldLen),
		DetectionSource: cleanLine(r.str(root.getFold("ProductName")), MaxFieldLen),
		TenantID:        cleanLine(r.str(root.getFold("TenantId")), MaxFieldLen),
		URL:             cleanURL(r.first(root.getFold("AlertLink"), root.getFold("AlertUri"))),
		Time:            parseTime(r.first(root.getFold("TimeGenerated"), root.getFold("StartTimeUtc"))),
	}
	ents := root.getFold("Entities")
	if s, ok := ents.v.(string); ok {
		// The trigger may carry Entities as a string holding the array.
		var v any
		if strings.TrimSpace(s) != "" {
			var err error
			if v, err = parseJSON([]byte(s)); err != nil {
				return Alert{}, &FieldError{Field: ents.path, Msg: "a string that does not hold a JSON array: " + jsonErrText(err)}
			}
		}
		ents = node{v: v, path: ents.path}
	}
	var ds deviceSet
	for i := range r.array(ents) {
		e := ents.index(i)
		if r.object(e) == nil {
			continue
		}
		kind := r.str(e.getFold("Type"))
		if kind == "" {
			kind = r.str(e.getFold("kind"))
		}
		if !strings.EqualFold(kind, "host") {
			continue
		}
		id, dns, aad := sentinelHost(&r, e)
		ds.add(id, dns, aad)
	}
	if r.err != nil {
		return Alert{}, r.err
	}
	id, err := alertID(idNode, rawID)
	if err != nil {
		return Alert{}, err
	}
	a.ID = id
	ds.fill(&a)
	return a, nil
}

// sentinelHost reads one host entity (the incident entity's properties, or a
// flat alert-trigger entity). The device id is MdatpDeviceId, at the top or
// in additionalData. The DNS name prefers Defender's own name for the device
// (additionalData.DeviceDnsName), then FQDN, then HostName + DnsDomain, then
// HostName alone.
func sentinelHost(r *reader, e node) (id, dns, aad string) {
	ad := e.getFold("additionalData")
	r.object(ad)
	id = r.first(e.getFold("MdatpDeviceId"), ad.getFold("MdatpDeviceId"))
	dns = r.first(ad.getFold("DeviceDnsName"), e.getFold("DeviceDnsName"), e.getFold("FQDN"))
	if dns == "" {
		dns = hostFQDN(r.str(e.getFold("HostName")), r.str(e.getFold("DnsDomain")))
	}
	aad = r.first(e.getFold("AadDeviceId"), ad.getFold("AadDeviceId"))
	return id, dns, aad
}

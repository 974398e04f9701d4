package alert

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
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
	w := entityWalk{r: &r, ds: &ds}
	ents := p.get("relatedEntities")
	for i := range r.array(ents) {
		w.top(ents.index(i))
	}
	w.done()
	if r.err != nil {
		return Alert{}, r.err
	}
	id, err := alertID(idNode, rawID)
	if err != nil {
		return Alert{}, err
	}
	a.ID = id
	a.Ref = sentinelIncidentRef(obj, p)
	ds.fill(&a)
	return a, nil
}

// sentinelIncidentRef is "Sentinel incident #<incidentNumber>", the number
// analysts know the incident by, else "Sentinel incident <name>" (the
// incident's GUID). It is "" when neither is usable; Decode then falls back
// to DefaultRef.
func sentinelIncidentRef(obj, p node) string {
	switch n := p.get("incidentNumber").v.(type) {
	case float64:
		if n >= 0 && n < 1e15 && n == float64(int64(n)) {
			return "Sentinel incident #" + strconv.FormatInt(int64(n), 10)
		}
	case string:
		if n = strings.TrimPrefix(strings.TrimSpace(n), "#"); n != "" && len(n) <= 20 && strings.Trim(n, "0123456789") == "" {
			return "Sentinel incident #" + n
		}
	}
	if name, ok := obj.get("name").v.(string); ok {
		if name = cleanLine(name, MaxFieldLen); name != "" {
			return "Sentinel incident " + shortID(name)
		}
	}
	return ""
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
	w := entityWalk{r: &r, ds: &ds}
	for i := range r.array(ents) {
		w.top(ents.index(i))
	}
	w.done()
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

// Bounds on the walk through one alert's entities, which are untrusted: how
// deep it follows nested entities, and how many objects and arrays it looks
// at in all.
const (
	maxEntityDepth = 16
	maxEntityNodes = 10_000
)

// entityWalk collects the hosts among Sentinel entities wherever they are
// defined. Sentinel writes an entity out in full where it first appears,
// which may be nested inside another entity (the host of an account or of a
// process: {"$id":"3","Type":"account","Host":{"$id":"4","Type":"host",...}}),
// and elsewhere refers to it only as {"$ref":"4"}. So the walk descends into
// every entity, reads each host once by its $id, and has no need to follow
// $ref: the entity it names is defined somewhere in the same list.
type entityWalk struct {
	r     *reader
	ds    *deviceSet
	seen  map[string]bool // $id of the hosts read
	nodes int
	cut   bool
}

// top reads one item of the entity list. The item itself is held to the
// documented shape (an object, kind/Type strings); what is nested in it is
// read leniently, since entities carry arbitrary extra data.
func (w *entityWalk) top(e node) {
	if w.r.object(e) == nil {
		return
	}
	w.visit(e, 0, true)
}

func (w *entityWalk) visit(n node, depth int, top bool) {
	if w.cut {
		return
	}
	w.nodes++
	if w.nodes > maxEntityNodes || depth > maxEntityDepth {
		w.cut = true
		return
	}
	switch v := n.v.(type) {
	case []any:
		for i := range v {
			w.visit(n.index(i), depth+1, false)
		}
	case map[string]any:
		if w.isHost(n, top) {
			w.host(n, top)
			return
		}
		// Sorted, so that the same body always lists its devices in the
		// same order.
		keys := make([]string, 0, len(v))
		for k, c := range v {
			switch c.(type) {
			case map[string]any, []any:
				keys = append(keys, k)
			}
		}
		slices.Sort(keys)
		for _, k := range keys {
			w.visit(node{v: v[k], path: n.child(k)}, depth+1, false)
		}
	}
}

// isHost reports whether the object n is a host entity: kind (incident
// entities) or Type (alert entities) is "host", in any case.
func (w *entityWalk) isHost(n node, top bool) bool {
	for _, key := range []string{"kind", "Type"} {
		k := n.getFold(key)
		var s string
		if top {
			s = w.r.str(k)
		} else {
			s, _ = k.v.(string)
		}
		if s != "" {
			if strings.EqualFold(s, "host") {
				return true
			}
			if top {
				return false
			}
		}
	}
	return false
}

// host reads one host entity, once per $id. An incident entity keeps its
// fields in properties; an alert entity (or an "Entities - Get Hosts" item)
// has them at its top.
func (w *entityWalk) host(n node, top bool) {
	if id, ok := n.get("$id").v.(string); ok && id != "" {
		if w.seen[id] {
			return
		}
		if w.seen == nil {
			w.seen = map[string]bool{}
		}
		w.seen[id] = true
	}
	props := n.getFold("properties")
	switch {
	case props.v == nil:
		props = n
	case top:
		if w.r.object(props) == nil {
			return
		}
	default:
		if _, ok := props.v.(map[string]any); !ok {
			props = n
		}
	}
	id, dns, aad := sentinelHost(w.r, props)
	w.ds.add(id, dns, aad)
}

// done notes, when the walk stopped at its bounds, that some entities were
// not read.
func (w *entityWalk) done() {
	if w.cut {
		w.ds.drop("", fmt.Sprintf("entities not all read: nested deeper than %d or more than %d objects and arrays", maxEntityDepth, maxEntityNodes))
	}
}

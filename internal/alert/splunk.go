package alert

import (
	"bytes"
	"encoding/json"
)

// decodeSplunk reads the body of Splunk's webhook alert action: the first
// result row of the search under "result", and the search's sid.
func decodeSplunk(root node, body []byte, _ Options) ([]Alert, error) {
	if m, err := root.object(); err != nil || m == nil {
		return nil, root.typeErr("an object")
	}
	var r reader
	idNode := root.get("sid")
	rawID := r.str(idNode)
	res := root.get("result")
	r.object(res)
	a := Alert{
		Title:       cleanLine(r.first(root.get("search_name"), res.get("search_name"), res.get("title")), MaxTitleLen),
		Description: cleanText(r.str(res.get("description")), MaxDescriptionLen),
		Category:    cleanLine(r.str(res.get("category")), MaxFieldLen),
		URL:         cleanURL(r.str(root.get("results_link"))),
		Raw:         json.RawMessage(bytes.Clone(body)),
	}
	sev := r.scalar(res.get("severity"))
	if sev == "" {
		sev = r.scalar(res.get("urgency"))
	}
	a.Severity = normSeverity(splunkSeverities, sev)
	// Multivalue fields come as arrays: the n-th id goes with the n-th name.
	// dest is the field the Splunk CIM gives the affected device; host is
	// last because it is Splunk's default field and may name a forwarder.
	ids := r.firstList(res.get("machineId"), res.get("mde_device_id"))
	names := r.firstList(res.get("dest"), res.get("dest_host"), res.get("host"))
	if r.err != nil {
		return nil, r.err
	}
	id, err := alertID(idNode, rawID)
	if err != nil {
		return nil, err
	}
	a.ID = id
	var ds deviceSet
	ds.addPairs(ids, names)
	ds.fill(&a)
	return []Alert{a}, nil
}

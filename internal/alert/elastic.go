package alert

import (
	"encoding/json"
	"strings"
)

// decodeElastic reads the body that the Kibana webhook connector template of
// docs/sources.md produces: {"rule": {...}, "alerts": [ECS alert documents]}.
// A bare array of alert documents is also accepted. Each document may use
// dotted keys ("kibana.alert.uuid") or nested objects; Kibana gives either.
func decodeElastic(root node, body []byte, _ Options) ([]Alert, error) {
	var rule node
	list := root
	rawKey := ""
	switch root.v.(type) {
	case []any:
	case map[string]any:
		rule = root.get("rule")
		if _, err := rule.object(); err != nil {
			return nil, err
		}
		list = root.get("alerts")
		rawKey = "alerts"
		if list.v == nil {
			return nil, &FieldError{Field: list.path, Msg: "missing: render {{{context.alerts}}} into \"alerts\" (see docs/sources.md)"}
		}
	default:
		return nil, root.typeErr("an object")
	}
	var rr reader
	ruleName := rr.str(rule.get("name"))
	ruleURL := rr.str(rule.get("url"))
	if rr.err != nil {
		return nil, rr.err
	}
	return eachItem(list, func() ([]json.RawMessage, error) { return rawItems(body, rawKey) }, func(n node, raw json.RawMessage) (Alert, error) {
		var r reader
		idNode := n.lookup("kibana.alert.uuid")
		rawID := r.str(idNode)
		a := Alert{
			Severity:     normSeverity(nil, r.first(n.lookup("kibana.alert.severity"), n.lookup("kibana.alert.rule.severity"))),
			Title:        cleanLine(r.first(n.lookup("kibana.alert.rule.name"), node{v: ruleName}), MaxTitleLen),
			Description:  cleanText(r.first(n.lookup("kibana.alert.reason"), n.lookup("kibana.alert.rule.description")), MaxDescriptionLen),
			Category:     cleanLine(r.str(n.lookup("kibana.alert.rule.category")), MaxFieldLen),
			Status:       cleanLine(r.first(n.lookup("kibana.alert.workflow_status"), n.lookup("kibana.alert.status")), MaxFieldLen),
			ThreatFamily: cleanLine(r.str(n.lookup("threat.software.name")), MaxFieldLen),
			Tags:         cleanList(r.strs(n.lookup("kibana.alert.rule.tags")), MaxFieldLen),
			Time:         parseTime(r.str(n.lookup("@timestamp"))),
			URL:          cleanURL(r.first(n.lookup("kibana.alert.url"), node{v: ruleURL})),
			Raw:          raw,
		}
		if strings.EqualFold(r.str(n.lookup("kibana.alert.status")), "recovered") {
			a.Skip = "kibana.alert.status is recovered: scanhook acts on active alerts only"
		}
		// MITRE techniques: kibana.alert.rule.threat[].technique[].id.
		var techs []string
		threats := n.lookup("kibana.alert.rule.threat")
		for i := range r.array(threats) {
			t := threats.index(i)
			tn := t.lookup("technique")
			for j := range r.array(tn) {
				techs = append(techs, r.str(tn.index(j).lookup("id")))
			}
		}
		a.MitreTechniques = cleanList(techs, MaxFieldLen)
		// host.id is the Elastic agent's id: used only in the rare case it is
		// a Defender machine id, by the general rule that only 40 hex is.
		ids := r.strs(n.lookup("host.id"))
		names := firstUsableList([][]string{r.strs(n.lookup("host.name")), r.strs(n.lookup("host.hostname"))}, usableName)
		if r.err != nil {
			return Alert{}, r.err
		}
		id, err := alertID(idNode, rawID)
		if err != nil {
			return Alert{}, err
		}
		a.ID = id
		var ds deviceSet
		ds.addLists(ids, names)
		ds.fill(&a)
		return a, nil
	})
}

package alert

import (
	"encoding/json"
	"net/url"
	"strings"
)

// defenderConsole is where a Defender alert is seen by an analyst.
const defenderConsole = "https://security.microsoft.com/alerts/"

// decodeDefender reads Defender for Endpoint alerts API objects: one alert, or
// {"value": [...]}.
func decodeDefender(root node, body []byte, _ Options) ([]Alert, error) {
	return listOrSingle(root, body, "value", func(n node, raw json.RawMessage) (Alert, error) {
		var r reader
		idNode := n.get("id")
		rawID := r.str(idNode)
		a := Alert{
			Severity:        normSeverity(defenderSeverities, r.str(n.get("severity"))),
			Title:           cleanLine(r.str(n.get("title")), MaxTitleLen),
			Description:     cleanText(r.str(n.get("description")), MaxDescriptionLen),
			Category:        cleanLine(r.str(n.get("category")), MaxFieldLen),
			DetectionSource: cleanLine(r.str(n.get("detectionSource")), MaxFieldLen),
			ThreatFamily:    cleanLine(r.str(n.get("threatFamilyName")), MaxFieldLen),
			Status:          cleanLine(r.str(n.get("status")), MaxFieldLen),
			MitreTechniques: cleanList(r.strs(n.get("mitreTechniques")), MaxFieldLen),
			TenantID:        cleanLine(r.str(n.get("aadTenantId")), MaxFieldLen),
			Time:            parseTime(r.str(n.get("alertCreationTime"))),
			Raw:             raw,
		}
		machineID := r.str(n.get("machineId"))
		dnsName := r.str(n.get("computerDnsName"))
		if r.err != nil {
			return Alert{}, r.err
		}
		id, err := alertID(idNode, rawID)
		if err != nil {
			return Alert{}, err
		}
		a.ID = id
		a.Ref = "Defender alert " + shortID(id)
		a.URL = defenderConsole + url.PathEscape(id)
		var ds deviceSet
		ds.add(machineID, dnsName, "")
		ds.fill(&a)
		return a, nil
	})
}

const graphDeviceEvidence = "#microsoft.graph.security.deviceEvidence"

// decodeGraph reads Microsoft Graph security alerts (v2): one alert, or
// {"value": [...]}. Devices are the deviceEvidence items.
func decodeGraph(root node, body []byte, _ Options) ([]Alert, error) {
	return listOrSingle(root, body, "value", func(n node, raw json.RawMessage) (Alert, error) {
		var r reader
		idNode := n.get("id")
		rawID := r.str(idNode)
		a := Alert{
			Severity:        normSeverity(graphSeverities, r.str(n.get("severity"))),
			Title:           cleanLine(r.str(n.get("title")), MaxTitleLen),
			Description:     cleanText(r.str(n.get("description")), MaxDescriptionLen),
			Category:        cleanLine(r.str(n.get("category")), MaxFieldLen),
			DetectionSource: cleanLine(r.str(n.get("detectionSource")), MaxFieldLen),
			ThreatFamily:    cleanLine(r.str(n.get("threatFamilyName")), MaxFieldLen),
			Status:          cleanLine(r.str(n.get("status")), MaxFieldLen),
			MitreTechniques: cleanList(r.strs(n.get("mitreTechniques")), MaxFieldLen),
			Tags:            cleanList(r.strs(n.get("systemTags")), MaxFieldLen),
			TenantID:        cleanLine(r.str(n.get("tenantId")), MaxFieldLen),
			Time:            parseTime(r.str(n.get("createdDateTime"))),
			URL:             cleanURL(r.str(n.get("alertWebUrl"))),
			Raw:             raw,
		}
		var ds deviceSet
		evNode := n.get("evidence")
		for i := range r.array(evNode) {
			e := evNode.index(i)
			if r.object(e) == nil {
				continue
			}
			if !strings.EqualFold(r.str(e.get("@odata.type")), graphDeviceEvidence) {
				continue
			}
			ds.add(r.str(e.get("mdeDeviceId")), r.str(e.get("deviceDnsName")), r.str(e.get("azureAdDeviceId")))
		}
		if r.err != nil {
			return Alert{}, r.err
		}
		id, err := alertID(idNode, rawID)
		if err != nil {
			return Alert{}, err
		}
		a.ID = id
		a.Ref = "Graph security alert " + shortID(id)
		ds.fill(&a)
		return a, nil
	})
}

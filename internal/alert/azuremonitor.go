package alert

import (
	"bytes"
	"encoding/json"
	"net/url"
	"strings"
)

const (
	azureCommonSchema = "azureMonitorCommonAlertSchema"
	// azurePortalAlert opens an alert's details blade; the alert id is the
	// path-escaped ARM id (slashes as %2F).
	azurePortalAlert = "https://portal.azure.com/#blade/Microsoft_Azure_Monitoring/AlertDetailsTemplateBlade/alertId/"
)

// Keys of data.customProperties (case-insensitive) that name the device. An
// action group's custom properties are where an Azure Monitor alert can carry
// a Defender machine id.
var (
	azureIDKeys  = []string{"machineId", "machine_id", "mdeDeviceId", "mde_device_id", "MdatpDeviceId"}
	azureDNSKeys = []string{"computerDnsName", "deviceDnsName", "dnsName", "dns_name", "hostName", "host_name", "host"}
)

// decodeAzureMonitor reads the Azure Monitor common alert schema.
func decodeAzureMonitor(root node, body []byte, _ Options) ([]Alert, error) {
	if m, err := root.object(); err != nil || m == nil {
		return nil, root.typeErr("an object")
	}
	var r reader
	schema := root.get("schemaId")
	if s := r.str(schema); r.err == nil && !strings.EqualFold(strings.TrimSpace(s), azureCommonSchema) {
		return nil, &FieldError{Field: schema.path, Msg: "must be " + azureCommonSchema + " (turn on the common alert schema in the action group)"}
	}
	data := root.get("data")
	ess := data.get("essentials")
	for _, n := range []node{data, ess} {
		if r.object(n) == nil {
			if r.err != nil {
				return nil, r.err
			}
			return nil, &FieldError{Field: n.path, Msg: "missing: the common alert schema has data.essentials"}
		}
	}
	idNode := ess.get("alertId")
	rawID := r.str(idNode)
	condition := cleanLine(r.str(ess.get("monitorCondition")), MaxFieldLen)
	a := Alert{
		Severity:        normSeverity(azureSeverities, r.str(ess.get("severity"))),
		Title:           cleanLine(r.str(ess.get("alertRule")), MaxTitleLen),
		Description:     cleanText(r.str(ess.get("description")), MaxDescriptionLen),
		Category:        cleanLine(r.str(ess.get("signalType")), MaxFieldLen),
		DetectionSource: cleanLine(r.str(ess.get("monitoringService")), MaxFieldLen),
		Status:          condition,
		Time:            parseTime(r.str(ess.get("firedDateTime"))),
		Raw:             json.RawMessage(bytes.Clone(body)),
	}
	switch {
	case strings.EqualFold(condition, "Fired"):
	case condition == "":
		a.Skip = "monitorCondition is missing: scanhook acts on Fired alerts only"
	default:
		a.Skip = "monitorCondition is " + cleanDropped(condition) + ": scanhook acts on Fired alerts only"
	}

	var ds deviceSet
	custom := data.get("customProperties")
	if r.object(custom) != nil {
		var id, dns string
		for _, k := range azureIDKeys {
			if id = strings.TrimSpace(r.str(custom.getFold(k))); id != "" {
				break
			}
		}
		for _, k := range azureDNSKeys {
			if dns = strings.TrimSpace(r.str(custom.getFold(k))); dns != "" {
				break
			}
		}
		ds.add(id, dns, "")
	}
	for _, name := range r.strs(ess.get("configurationItems")) {
		ds.add("", name, "")
	}
	if r.err != nil {
		return nil, r.err
	}
	id, err := alertID(idNode, rawID)
	if err != nil {
		return nil, err
	}
	a.ID = id
	a.URL = azurePortalAlert + url.PathEscape(id)
	ds.fill(&a)
	return []Alert{a}, nil
}

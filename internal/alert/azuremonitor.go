package alert

import (
	"bytes"
	"encoding/json"
	"net/url"
	"slices"
	"strings"
)

const (
	azureCommonSchema = "azureMonitorCommonAlertSchema"
	// azurePortalAlert opens an alert's details blade; the alert id is the
	// path-escaped ARM id (slashes as %2F).
	azurePortalAlert = "https://portal.azure.com/#blade/Microsoft_Azure_Monitoring/AlertDetailsTemplateBlade/alertId/"
)

// Keys of the rule's custom properties (case-insensitive) that name the
// device: where an Azure Monitor alert can carry a Defender machine id.
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

	ds := azureDevices(&r, data, ess)
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

// azureDevices finds an alert's devices, most explicit first:
//
//  1. the rule's custom properties: data.customProperties, and
//     data.alertContext.properties for metric and log search alert rules
//     (Log Alerts V2 carry them only there). When they name a usable device,
//     it is the alert's only one: the author of the rule said which.
//  2. else every machine the alert is about: the Computer dimension (a host
//     name), and the _ResourceId and ResourceId dimensions, alertTargetIDs
//     and configurationItems when they are the ARM id of a machine
//     (virtualMachines, scale-set VMs, Arc machines: the resource name). A
//     plain name in configurationItems counts only when one of those
//     already named that machine: it may as well be a storage account or
//     "budgets". Other resources are never devices; when nothing is found,
//     they are listed as dropped, so the decision says why.
func azureDevices(r *reader, data, ess node) deviceSet {
	var ds deviceSet
	ctx := data.get("alertContext")
	custom := []node{data.get("customProperties")}
	// Activity log alerts have no conditionType, and their
	// alertContext.properties are the event's, not the rule's.
	if r.str(ctx.get("conditionType")) != "" {
		custom = append(custom, ctx.get("properties"))
	}
	var ids, names []string
	for _, c := range custom {
		if r.object(c) == nil {
			continue
		}
		for _, k := range azureIDKeys {
			ids = append(ids, r.str(c.getFold(k)))
		}
		for _, k := range azureDNSKeys {
			names = append(names, r.str(c.getFold(k)))
		}
	}
	ds.addFirst(firstUsableID(ids), names, "")
	if len(ds.devices) > 0 {
		return ds
	}

	var machines []string      // resource names of machines
	var computers []string     // Computer dimension values
	var others []DroppedDevice // resources that are not machines
	addResource := func(id string) {
		name, why := azureMachine(id)
		switch {
		case why == "":
			machines = append(machines, name)
		case strings.HasPrefix(why, azureScaleSetInstance):
			ds.drop(name, why) // a machine, so always said
		case name != "":
			others = append(others, DroppedDevice{Value: name, Reason: why})
		}
	}
	for _, dim := range azureDimensions(r, ctx) {
		switch {
		case strings.EqualFold(dim.name, "Computer"):
			computers = append(computers, dim.value)
		case strings.EqualFold(dim.name, "_ResourceId"), strings.EqualFold(dim.name, "ResourceId"):
			addResource(dim.value)
		}
	}
	for _, t := range r.strs(ess.get("alertTargetIDs")) {
		addResource(t)
	}
	for _, item := range r.strs(ess.get("configurationItems")) {
		item = strings.TrimSpace(item)
		switch {
		case item == "":
		case strings.HasPrefix(item, "/"):
			addResource(item)
		case slices.ContainsFunc(machines, func(m string) bool { return strings.EqualFold(m, item) }),
			slices.ContainsFunc(computers, func(c string) bool { return strings.EqualFold(c, item) }):
			// the same machine, already named
		case !slices.ContainsFunc(others, func(o DroppedDevice) bool { return strings.EqualFold(o.Value, item) }):
			others = append(others, DroppedDevice{Value: item, Reason: "a configuration item that no virtual machine target or Computer dimension names: it may be any resource, so it is not taken for a device"})
		}
	}
	for _, c := range computers {
		ds.add("", c, "")
	}
	for _, m := range machines {
		// A VM whose computer name is the Computer dimension's short name
		// is the same machine.
		if slices.ContainsFunc(computers, func(c string) bool { return strings.EqualFold(strings.Split(c, ".")[0], m) }) {
			continue
		}
		ds.add("", m, "")
	}
	if len(ds.devices) == 0 && len(ds.dropped) == 0 {
		for _, o := range others {
			ds.drop(o.Value, o.Reason)
		}
	}
	return ds
}

type azureDimension struct{ name, value string }

// azureDimensions reads the dimensions of metric and log search alerts
// (alertContext.condition.allOf[].dimensions[]) and of the older log alerts
// (alertContext.Dimensions[]).
func azureDimensions(r *reader, ctx node) []azureDimension {
	var lists []node
	allOf := ctx.get("condition").get("allOf")
	for i := range r.array(allOf) {
		lists = append(lists, allOf.index(i).get("dimensions"))
	}
	lists = append(lists, ctx.get("Dimensions"))
	var out []azureDimension
	for _, l := range lists {
		for i := range r.array(l) {
			d := l.index(i)
			out = append(out, azureDimension{name: strings.TrimSpace(r.str(d.get("name"))), value: strings.TrimSpace(r.scalar(d.get("value")))})
		}
	}
	return out
}

const azureScaleSetInstance = "a scale-set VM named by its instance id"

// azureMachine reads an ARM resource id. For a machine it returns the
// resource name and no reason; for any other resource, its name and why it
// is not a device; for text that is not an ARM id, nothing.
func azureMachine(id string) (name, why string) {
	id = strings.TrimSpace(id)
	parts := strings.Split(strings.Trim(id, "/"), "/")
	if len(parts) < 2 || !strings.EqualFold(parts[0], "subscriptions") {
		return "", ""
	}
	p := -1
	for i, s := range parts {
		if strings.EqualFold(s, "providers") {
			p = i
		}
	}
	if p < 0 || len(parts)-p < 4 {
		// A subscription or resource group: no resource name.
		return "", ""
	}
	rest := parts[p+1:]
	ns, typ := strings.ToLower(rest[0]), strings.ToLower(rest[1])
	switch {
	case ns == "microsoft.compute" && typ == "virtualmachines" && len(rest) == 3,
		ns == "microsoft.hybridcompute" && typ == "machines" && len(rest) == 3:
		return rest[2], ""
	case ns == "microsoft.compute" && typ == "virtualmachinescalesets" && len(rest) == 5 && strings.EqualFold(rest[3], "virtualMachines"):
		if strings.Trim(rest[4], "0123456789") == "" {
			return rest[2] + "/" + rest[4], azureScaleSetInstance + ", which is not its computer name: split the alert rule by the Computer dimension"
		}
		return rest[4], ""
	}
	return rest[len(rest)-1], "a " + rest[0] + "/" + strings.Join(oddParts(rest[1:]), "/") + " resource, not a machine: only virtual machines, scale-set VMs and Arc machines are devices"
}

// oddParts keeps the type segments of "type/name/subtype/name...".
func oddParts(l []string) []string {
	var out []string
	for i := 0; i < len(l); i += 2 {
		out = append(out, l[i])
	}
	return out
}

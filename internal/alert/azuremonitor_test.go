package alert

import (
	"strings"
	"testing"

	"github.com/scanhook/scanhook/internal/domain"
)

func TestAzureMonitorDevices(t *testing.T) {
	const portal = "https://portal.azure.com/#blade/Microsoft_Azure_Monitoring/AlertDetailsTemplateBlade/alertId/"
	cases := []struct {
		file    string
		sev     domain.Severity
		devices []Device
		dropped []string
		why     string // in the first dropped reason
	}{
		// Log Alerts V2 carry the rule's custom properties in
		// alertContext.properties: the documented machineId works there,
		// and names the only device.
		{file: "azuremonitor-log-v2-properties.json", sev: domain.SeverityHigh,
			devices: []Device{{ID: "95ffd3240bde37ef347cf836db74b13f85cbf185"}}},
		// Split by Computer, on a workspace: the computer; the workspace
		// target is not a device and, with a device found, not listed.
		{file: "azuremonitor-log-v2-computer.json", sev: domain.SeverityInformational,
			devices: []Device{{DNSName: "test-computer"}}},
		// A Sev2 storage-account metric alert used to queue a scan of
		// "test-storageaccount".
		{file: "azuremonitor-metric-storage.json", sev: domain.SeverityMedium,
			dropped: []string{"test-storageaccount"}, why: "microsoft.storage/storageaccounts resource, not a machine"},
		// A budget alert used to name "budgets".
		{file: "azuremonitor-budget.json", sev: domain.SeverityInformational,
			dropped: []string{"budgets"}, why: "configuration item"},
		// An activity log alert on a VM: the VM. Its event properties
		// ("host") are not custom properties.
		{file: "azuremonitor-activitylog-vm.json", sev: domain.SeverityInformational,
			devices: []Device{{DNSName: "test-vm"}}},
	}
	for _, c := range cases {
		t.Run(c.file, func(t *testing.T) {
			got, err := Decode(domain.SourceAzureMonitor, td(t, c.file), Options{})
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 {
				t.Fatalf("%d alerts", len(got))
			}
			checkAlerts(t, domain.SourceAzureMonitor, got, []want{{ID: got[0].ID, Severity: c.sev, URL: portal + strings.ReplaceAll(got[0].ID, "/", "%2F"),
				Devices: c.devices, Dropped: c.dropped}})
			if c.why != "" && (len(got[0].Dropped) == 0 || !strings.Contains(got[0].Dropped[0].Reason, c.why)) {
				t.Errorf("dropped %+v, want a reason with %q", got[0].Dropped, c.why)
			}
			if got[0].Skip != "" {
				t.Errorf("skip %q", got[0].Skip)
			}
		})
	}
}

func TestAzureMachineResourceIDs(t *testing.T) {
	cases := []struct{ id, name, why string }{
		{"/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm-1", "vm-1", ""},
		{"/subscriptions/s/resourcegroups/rg/providers/microsoft.compute/virtualmachines/VM-2", "VM-2", ""},
		{"/subscriptions/s/resourceGroups/rg/providers/Microsoft.HybridCompute/machines/arc-01", "arc-01", ""},
		{"/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/ss/virtualMachines/3", "ss/3", "instance id"},
		{"/subscriptions/s/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/st1", "st1", "not a machine"},
		{"/subscriptions/s/resourceGroups/rg/providers/Microsoft.OperationalInsights/workspaces/law", "law", "not a machine"},
		{"/subscriptions/s/resourceGroups/rg/providers/microsoft.insights/components/app", "app", "not a machine"},
		{"/subscriptions/s/providers/Microsoft.Consumption/budgets/b", "b", "not a machine"},
		{"/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm-1/extensions/x", "x", "not a machine"},
		{"/subscriptions/s", "", ""},
		{"a0a0a0a0-bbbb-cccc-dddd-e1e1e1e1e1e1", "", ""},
		{"vm-1", "", ""},
	}
	for _, c := range cases {
		name, why := azureMachine(c.id)
		if name != c.name || (c.why == "") != (why == "") || !strings.Contains(why, c.why) {
			t.Errorf("azureMachine(%q) = %q, %q; want %q, %q", c.id, name, why, c.name, c.why)
		}
	}
	// Through a whole alert: _ResourceId dimensions of a VM and an Arc
	// machine are devices; a scale-set instance id is dropped, saying why.
	body := `{"schemaId":"azureMonitorCommonAlertSchema","data":{"essentials":{"alertId":"a","monitorCondition":"Fired"},
		"alertContext":{"conditionType":"LogQueryCriteria","condition":{"allOf":[{"dimensions":[
		{"name":"_ResourceId","value":"/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm-1"},
		{"name":"_ResourceId","value":"/subscriptions/s/resourceGroups/rg/providers/Microsoft.HybridCompute/machines/arc-01"}]},
		{"dimensions":[{"name":"ResourceId","value":"/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/ss/virtualMachines/3"}]}]}}}}`
	got, err := Decode(domain.SourceAzureMonitor, []byte(body), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if d := got[0].Devices; len(d) != 2 || d[0].DNSName != "vm-1" || d[1].DNSName != "arc-01" {
		t.Errorf("devices %+v", d)
	}
	if d := got[0].Dropped; len(d) != 1 || d[0].Value != "ss/3" || !strings.Contains(d[0].Reason, "instance id") {
		t.Errorf("dropped %+v", d)
	}
}

// Resolved alerts are recorded, never scanned, whatever devices they name.
func TestAzureMonitorResolvedIsSkipped(t *testing.T) {
	body := strings.Replace(string(td(t, "azuremonitor-log-v2-computer.json")), `"monitorCondition": "Fired"`, `"monitorCondition": "Resolved"`, 1)
	got, err := Decode(domain.SourceAzureMonitor, []byte(body), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got[0].Skip != "monitorCondition is Resolved: scanhook acts on Fired alerts only" {
		t.Errorf("skip %q", got[0].Skip)
	}
}

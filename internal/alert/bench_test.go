package alert

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// sentinelIncident50KB builds a Sentinel incident trigger body of about 50 KB
// with 20 related entities: hosts (with and without a machine id), files,
// accounts and IPs, with the long ARM ids and additionalData of real ones.
func sentinelIncident50KB() []byte {
	const ws = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-security-operations/providers/Microsoft.OperationalInsights/workspaces/law-security-operations-prod"
	var ents []any
	for i := range 20 {
		id := fmt.Sprintf("%s/providers/Microsoft.SecurityInsights/Entities/%08d-1111-2222-3333-444455556666", ws, i)
		var e map[string]any
		switch i % 4 {
		case 0, 1:
			ad := map[string]any{
				"DeviceDnsName": fmt.Sprintf("host-%02d.corp.example.com", i), "RiskScore": "high", "HealthStatus": "active",
				"FirstSeenDateTime": "2023-09-04T03:29:26.736412+00:00", "RbacGroupName": "Servers",
				"OnboardingStatus": "onboarded", "LoggedOnUsers": strings.Repeat("CORP\\user, ", 60),
			}
			if i%4 == 0 {
				ad["MdatpDeviceId"] = fmt.Sprintf("%040x", i+1)
			}
			e = map[string]any{"id": id, "type": "Microsoft.SecurityInsights/Entities", "kind": "Host", "properties": map[string]any{
				"hostName": fmt.Sprintf("host-%02d", i), "dnsDomain": "corp.example.com", "osFamily": "Windows", "osVersion": "10.0.20348",
				"additionalData": ad, "friendlyName": fmt.Sprintf("host-%02d", i)}}
		case 2:
			e = map[string]any{"id": id, "type": "Microsoft.SecurityInsights/Entities", "kind": "File", "properties": map[string]any{
				"directory": `C:\Users\alice\AppData\Local\Temp`, "fileName": fmt.Sprintf("dropper-%d.exe", i),
				"fileHashEntityIds": []string{id + "/sha1", id + "/sha256"},
				"additionalData":    map[string]any{"DetectionStatus": "prevented", "Notes": strings.Repeat("x", 2000)}}}
		default:
			e = map[string]any{"id": id, "type": "Microsoft.SecurityInsights/Entities", "kind": "Account", "properties": map[string]any{
				"accountName": "alice", "ntDomain": "CORP", "upnSuffix": "corp.example.com",
				"additionalData": map[string]any{"Sid": "S-1-5-21-1111-2222-3333-1001", "Notes": strings.Repeat("y", 2000)}}}
		}
		ents = append(ents, e)
	}
	body := map[string]any{
		"eventUniqueId": "0f1c2d3e-0000-4000-8000-000000000001", "objectSchemaType": "Incident", "objectEventType": "Create",
		"workspaceId":   "11111111-2222-3333-4444-555555555555",
		"workspaceInfo": map[string]any{"SubscriptionId": "00000000-0000-0000-0000-000000000000", "ResourceGroupName": "rg-security-operations", "WorkspaceName": "law-security-operations-prod"},
		"object": map[string]any{
			"id":   ws + "/providers/Microsoft.SecurityInsights/Incidents/7e3c2a10-1111-2222-3333-444455556666",
			"name": "7e3c2a10-1111-2222-3333-444455556666", "type": "Microsoft.SecurityInsights/Incidents",
			"properties": map[string]any{
				"title": "Multi-stage incident involving ransomware on multiple endpoints", "severity": "High", "status": "New",
				"description":    strings.Repeat("An attacker moved laterally and encrypted files. ", 120),
				"incidentNumber": 4242, "createdTimeUtc": "2024-05-01T10:00:00.1234567Z",
				"incidentUrl":     "https://portal.azure.com/#asset/Microsoft_Azure_Security_Insights/Incident" + ws + "/providers/Microsoft.SecurityInsights/Incidents/7e3c2a10-1111-2222-3333-444455556666",
				"labels":          []any{map[string]any{"labelName": "crown-jewel", "labelType": "User"}},
				"additionalData":  map[string]any{"alertsCount": 7, "alertProductNames": []string{"Microsoft Defender Advanced Threat Protection"}, "tactics": []string{"Impact", "LateralMovement"}, "techniques": []string{"T1486", "T1021"}},
				"relatedEntities": ents,
			},
		},
	}
	b, err := json.Marshal(body)
	if err != nil {
		panic(err)
	}
	return b
}

func TestBenchBodyShape(t *testing.T) {
	b := sentinelIncident50KB()
	if len(b) < 45_000 || len(b) > 60_000 {
		t.Fatalf("benchmark body is %d bytes, want about 50 KB", len(b))
	}
	got, err := Decode("sentinel", b, Options{})
	if err != nil {
		t.Fatal(err)
	}
	// Hosts 0,4,…,16 have ids, 1,5,…,17 only names: 10 devices.
	if n := len(got[0].Devices); n != 10 {
		t.Fatalf("%d devices, want 10", n)
	}
}

func BenchmarkDecodeSentinelIncident50KB(b *testing.B) {
	body := sentinelIncident50KB()
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decode("sentinel", body, Options{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkJSONBaseline50KB is encoding/json alone on the same body: the
// floor under Decode, to read the figure above against on a busy machine.
func BenchmarkJSONBaseline50KB(b *testing.B) {
	body := sentinelIncident50KB()
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		var v any
		if err := json.Unmarshal(body, &v); err != nil {
			b.Fatal(err)
		}
	}
}

// Package alert owns the normalized alert that every source is decoded into,
// and the per-source decoders that build it from what a SIEM or SOAR sends.
//
// It is pure: no storage, no HTTP, no Defender. Everything in an Alert came
// from outside and is untrusted, except Device.ID and Device.DNSName, which a
// decoder only sets after checking them (see ValidMachineID, ValidDNSName), so
// that nothing from an alert can later steer a URL path or an OData filter.
package alert

import (
	"encoding/json"
	"strings"
	"time"

	"github.com/scanhook/scanhook/internal/domain"
)

// Device is one device an alert names, by at least one of its fields. Each
// is either empty or checked: ID is a 40-hex Defender machine id, DNSName a
// valid host name, AADDeviceID a GUID (all lower case), IP an internal
// (private or unique-local) address in its canonical form (ValidInternalIP).
type Device struct {
	ID          string `json:"id,omitempty"`
	DNSName     string `json:"dns_name,omitempty"`
	AADDeviceID string `json:"aad_device_id,omitempty"`
	IP          string `json:"ip,omitempty"`
}

// Key identifies the device for cooldowns and "one open scan per device":
// the machine id when known, else the DNS name, else the AAD device id,
// else the IP address. Names of one machine have different keys until the
// dispatcher resolves them; it checks again by machine id before any scan.
func (d Device) Key() string {
	switch {
	case d.ID != "":
		return "id:" + d.ID
	case d.DNSName != "":
		return "dns:" + d.DNSName
	case d.AADDeviceID != "":
		return "aad:" + d.AADDeviceID
	default:
		return "ip:" + d.IP
	}
}

// DroppedDevice is a device the alert named that cannot be used, and why.
// Value is the offending text, truncated; it is for explanations only.
type DroppedDevice struct {
	Value  string `json:"value"`
	Reason string `json:"reason"`
}

// Alert is one normalized alert.
type Alert struct {
	ID              string          `json:"id"`
	Source          string          `json:"source"`
	Severity        domain.Severity `json:"severity"`
	Title           string          `json:"title,omitempty"`
	Description     string          `json:"description,omitempty"`
	Category        string          `json:"category,omitempty"`
	DetectionSource string          `json:"detection_source,omitempty"`
	ThreatFamily    string          `json:"threat_family,omitempty"`
	Status          string          `json:"status,omitempty"`
	MitreTechniques []string        `json:"mitre_techniques,omitempty"`
	Tags            []string        `json:"tags,omitempty"`
	TenantID        string          `json:"tenant_id,omitempty"`
	Time            time.Time       `json:"time,omitzero"`
	// URL points back to the alert in its own console.
	URL string `json:"url,omitempty"`
	// Ref is a short reference a person can use to find the alert in its
	// own console, such as "Sentinel incident #1042" or "Defender alert
	// da637472900382838869_1364969609". Decoders that know the source's
	// own short name for an alert set it; Decode fills in DefaultRef for
	// the others.
	Ref     string          `json:"ref,omitempty"`
	Devices []Device        `json:"devices"`
	Dropped []DroppedDevice `json:"dropped,omitempty"`
	// Skip, when set, says why scanhook must not act on this alert at all
	// (for example an Azure Monitor alert that is Resolved). The alert is
	// still recorded so the decision is explained.
	Skip string `json:"skip,omitempty"`
	// Raw is this alert's own part of the body as sent (for raw.<path> in
	// rules and for the audit trail).
	Raw json.RawMessage `json:"-"`
}

// sourceNames are the sources' names as people write them, for Ref.
var sourceNames = map[string]string{
	domain.SourceDefender:     "Defender",
	domain.SourceGraph:        "Graph security",
	domain.SourceSentinel:     "Sentinel",
	domain.SourceAzureMonitor: "Azure Monitor",
	domain.SourceSplunk:       "Splunk",
	domain.SourceElastic:      "Elastic",
	domain.SourceAlertmanager: "Alertmanager",
	domain.SourceGeneric:      "generic",
}

// maxRefIDLen caps the id part of a Ref, in runes.
const maxRefIDLen = 64

// DefaultRef is the reference for an alert whose decoder sets no Ref: the
// source's name and "alert" and the id, shortened to its last path segment
// when it is a path (an Azure resource id), and cut to 64 characters.
func DefaultRef(a *Alert) string {
	name := sourceNames[a.Source]
	if name == "" {
		name = a.Source
	}
	return strings.TrimSpace(name + " alert " + shortID(a.ID))
}

// shortID is the part of id a person can read and search for: the last
// segment of a path, cut to maxRefIDLen runes ("…" marks a cut).
func shortID(id string) string {
	id = strings.TrimSpace(id)
	if i := strings.LastIndexByte(strings.TrimRight(id, "/"), '/'); i >= 0 {
		id = strings.TrimRight(id, "/")[i+1:]
	}
	n := 0
	for i := range id {
		if n == maxRefIDLen {
			return id[:i] + "…"
		}
		n++
	}
	return id
}

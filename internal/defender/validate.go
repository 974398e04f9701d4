package defender

import (
	"net/url"
	"regexp"
	"strings"
)

var (
	// machineIDRE: Defender machine ids are SHA-1 sized, 40 hex characters.
	machineIDRE = regexp.MustCompile(`^[0-9a-fA-F]{40}$`)
	// uuidRE is the strict form of a machine action id: a canonical GUID.
	// Nothing else may go into /api/machineactions/{id}.
	uuidRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
	// dnsLabelRE allows the underscore too: Windows computer names may
	// contain one and Defender reports them as they are.
	dnsLabelRE = regexp.MustCompile(`^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$`)
	// tenantRE: a tenant GUID or a verified domain such as contoso.onmicrosoft.com.
	tenantRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9.-]{0,253}$`)
	// enumValueRE covers action types and statuses (RunAntiVirusScan, Pending...).
	enumValueRE = regexp.MustCompile(`^[A-Za-z]{1,64}$`)
)

// ValidMachineID reports whether id is a Defender machine id (40 hex characters).
func ValidMachineID(id string) bool { return machineIDRE.MatchString(id) }

// ValidActionID reports whether id is a machine action id (a canonical GUID).
func ValidActionID(id string) bool { return uuidRE.MatchString(id) }

// ValidDNSName reports whether name is a DNS name or a computer name as
// Defender reports it: labels of letters, digits, '-' and '_', each 1-63
// characters, 253 in all, with at most one trailing dot.
func ValidDNSName(name string) bool {
	name = strings.TrimSuffix(name, ".")
	if name == "" || len(name) > 253 {
		return false
	}
	for label := range strings.SplitSeq(name, ".") {
		if !dnsLabelRE.MatchString(label) {
			return false
		}
	}
	return true
}

// odataString renders s as an OData string literal: single quotes doubled,
// the whole wrapped in single quotes.
func odataString(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// queryEscape percent-encodes a query value with %20 for spaces: '+' means a
// space only to form decoders, and OData servers differ on that.
func queryEscape(s string) string {
	return strings.ReplaceAll(url.QueryEscape(s), "+", "%20")
}

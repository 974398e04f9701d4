package alert

import (
	"fmt"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// ValidMachineID reports whether s is a Defender machine id: exactly 40
// hexadecimal characters (either case; decoders store it lower-cased).
func ValidMachineID(s string) bool {
	if len(s) != 40 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

// ValidDNSName reports whether s is an RFC 1123 host name: dot-separated
// labels of 1-63 letters, digits and hyphens, no label starting or ending
// with a hyphen, at most 253 characters once one trailing dot is removed.
// Letters may be either case (host names are case-insensitive; decoders
// store them lower-cased). As RFC 1123 section 2.1 notes, the last label is
// never all digits, which keeps IPv4 addresses out.
func ValidDNSName(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if len(label) == 0 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	last := s[strings.LastIndexByte(s, '.')+1:]
	return strings.Trim(last, "0123456789") != ""
}

// normalizeDNSName returns the checked, lower-cased form of s without its
// trailing dot, or "" when s cannot name a device (see dnsNameProblem).
func normalizeDNSName(s string) string {
	s = strings.TrimSpace(s)
	if dnsNameProblem(s) != "" {
		return ""
	}
	return strings.ToLower(strings.TrimSuffix(s, "."))
}

// dnsNameProblem says why s cannot name a device, or "" when it can: it must
// be a host name (ValidDNSName), and not one that means "this host" to
// whoever reads it. An IP address is never a DNS name (addFirst turns an
// internal one into a device looked up by IP instead).
func dnsNameProblem(s string) string {
	s = strings.TrimSpace(s)
	if ip, ok := parseIP(s); ok {
		switch {
		case ip.IsLoopback():
			return "a loopback IP address, never a device"
		case ip.IsLinkLocalUnicast():
			return "a link-local IP address, never a device"
		}
		return "an IP address, not a DNS name (only an internal address, with no name beside it, is looked up by IP)"
	}
	if !ValidDNSName(s) {
		return "not a valid host name"
	}
	if localHostName(s) {
		return "a name for the local host (localhost, loopback), never a device"
	}
	return ""
}

// parseIP reads an IPv4 or IPv6 address, also in brackets or with a zone.
func parseIP(s string) (netip.Addr, bool) {
	s = strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
	ip, err := netip.ParseAddr(s)
	return ip, err == nil
}

// localHostName reports the names that resolve to the host itself on common
// systems: localhost and its subdomains (RFC 6761), and the loopback aliases
// of /etc/hosts (localhost.localdomain, ip6-localhost, ip6-loopback, ...).
func localHostName(s string) bool {
	s = strings.ToLower(strings.TrimSuffix(s, "."))
	switch s {
	case "localhost", "localhost.localdomain", "localhost4", "localhost4.localdomain4",
		"localhost6", "localhost6.localdomain6", "ip6-localhost", "ip6-loopback":
		return true
	}
	return strings.HasSuffix(s, ".localhost")
}

// validGUID reports whether s is a GUID in its usual 8-4-4-4-12 form (the
// Azure AD device id).
func validGUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
				return false
			}
		}
	}
	return true
}

// isControl covers C0, DEL, C1 and the bidirectional overrides and
// isolates, which can make a title read differently from what it holds.
func isControl(r rune) bool {
	return unicode.IsControl(r) || r >= 0x202A && r <= 0x202E || r >= 0x2066 && r <= 0x2069 || r == 0x2028 || r == 0x2029
}

func stripControls(s string) string {
	if strings.IndexFunc(s, isControl) < 0 {
		return s
	}
	return strings.Map(func(r rune) rune {
		if isControl(r) {
			return -1
		}
		return r
	}, s)
}

// truncate cuts s to at most maxLen bytes on a rune boundary.
func truncate(s string, maxLen int) string {
	if len(s) <= maxLen {
		return s
	}
	cut := maxLen
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}

// cleanLine is for one-line fields: whitespace controls become spaces,
// other controls go, and the result is trimmed and capped.
func cleanLine(s string, maxLen int) string {
	s = truncate(s, 4*maxLen) // bound the work before mapping
	if strings.IndexFunc(s, isControl) < 0 {
		return truncate(strings.TrimSpace(s), maxLen)
	}
	s = strings.Map(func(r rune) rune {
		switch {
		case r == '\n' || r == '\r' || r == '\t':
			return ' '
		case isControl(r):
			return -1
		}
		return r
	}, s)
	return truncate(strings.TrimSpace(s), maxLen)
}

// cleanText is for descriptions: it keeps line breaks and tabs.
func cleanText(s string, maxLen int) string {
	s = truncate(s, 4*maxLen)
	if strings.IndexFunc(s, func(r rune) bool { return r != '\n' && r != '\t' && isControl(r) }) < 0 {
		return truncate(strings.TrimSpace(s), maxLen)
	}
	s = strings.Map(func(r rune) rune {
		if r != '\n' && r != '\t' && isControl(r) {
			return -1
		}
		return r
	}, s)
	return truncate(strings.TrimSpace(s), maxLen)
}

func cleanList(l []string, maxLen int) []string {
	var out []string
	seen := make(map[string]bool, len(l))
	for _, s := range l {
		if len(out) >= MaxListLen {
			break
		}
		s = cleanLine(s, maxLen)
		if s != "" && !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// cleanURL keeps only absolute http(s) URLs: the URL goes into scan comments
// and the audit trail, never into a request scanhook makes.
func cleanURL(s string) string {
	s = strings.TrimSpace(s)
	if s == "" || len(s) > MaxURLLen || strings.IndexFunc(s, func(r rune) bool { return isControl(r) || r == ' ' }) >= 0 {
		return ""
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return ""
	}
	return s
}

// cleanDropped renders an unusable value for DroppedDevice.Value and
// messages: no controls, capped.
func cleanDropped(s string) string {
	s = stripControls(truncate(s, 4*maxDroppedValueLen))
	if len(s) > maxDroppedValueLen {
		return truncate(s, maxDroppedValueLen) + "…"
	}
	return s
}

// alertID checks an alert id read at n: controls stripped, required, capped.
func alertID(n node, s string) (string, error) {
	s = strings.TrimSpace(stripControls(s))
	if s == "" {
		return "", &FieldError{Field: n.label(), Msg: "missing or empty: the alert id is required"}
	}
	if len(s) > MaxIDLen {
		return "", &FieldError{Field: n.label(), Msg: fmt.Sprintf("longer than %d bytes", MaxIDLen)}
	}
	return s, nil
}

// deviceSet gathers an alert's devices: checked, deduplicated and capped.
type deviceSet struct {
	devices []Device
	dropped []DroppedDevice
	more    int // dropped devices beyond MaxDroppedPerAlert
}

func (d *deviceSet) drop(value, reason string) {
	if len(d.dropped) >= MaxDroppedPerAlert {
		d.more++
		return
	}
	d.dropped = append(d.dropped, DroppedDevice{Value: cleanDropped(value), Reason: reason})
}

// add takes one device as the source names it. A machine id is used only when
// it is 40 hex; anything else is never an id, and the device then stands on
// its DNS name, if that is a host name, or on its Entra ID (Azure AD) device
// id, if that is a GUID: the dispatcher can look a machine up by either.
func (d *deviceSet) add(id, dns, aad string) {
	id, dns, aad = strings.TrimSpace(id), strings.TrimSpace(dns), strings.TrimSpace(aad)
	if id == "" && dns == "" && aad == "" {
		return
	}
	var dev Device
	if ValidMachineID(id) {
		dev.ID = strings.ToLower(id)
	}
	dev.DNSName = normalizeDNSName(dns)
	if validGUID(aad) {
		dev.AADDeviceID = strings.ToLower(aad)
	}
	if dev.ID == "" && dev.DNSName == "" && dev.AADDeviceID == "" {
		var why []string
		if id != "" {
			why = append(why, "machine id is not 40 hexadecimal characters")
		}
		if dns != "" {
			why = append(why, "DNS name is "+dnsNameProblem(dns))
		} else {
			why = append(why, "no DNS name")
		}
		if aad != "" {
			why = append(why, "Azure AD device id is not a GUID")
		}
		value := dns
		if value == "" {
			value = id
		}
		if value == "" {
			value = aad
		}
		d.drop(value, strings.Join(why, "; "))
		return
	}
	for i := range d.devices {
		e := &d.devices[i]
		sameID := dev.ID != "" && e.ID == dev.ID
		sameName := dev.DNSName != "" && e.DNSName == dev.DNSName && (dev.ID == "" || e.ID == "")
		sameAAD := dev.AADDeviceID != "" && e.AADDeviceID == dev.AADDeviceID && (dev.ID == "" || e.ID == "" || dev.ID == e.ID)
		if !sameID && !sameName && !sameAAD {
			continue
		}
		if e.ID == "" {
			e.ID = dev.ID
		}
		if e.DNSName == "" {
			e.DNSName = dev.DNSName
		}
		if e.AADDeviceID == "" {
			e.AADDeviceID = dev.AADDeviceID
		}
		return
	}
	if len(d.devices) >= MaxDevicesPerAlert {
		v := dev.ID
		if v == "" {
			v = dev.DNSName
		}
		if v == "" {
			v = dev.AADDeviceID
		}
		d.drop(v, fmt.Sprintf("more than %d devices in one alert", MaxDevicesPerAlert))
		return
	}
	d.devices = append(d.devices, dev)
}

// addFirst adds one device named by the first usable of several candidate
// names (fields tried in order): a present but unusable name, such as an IP
// address where a later field holds the host name, is skipped rather than
// fatal. When none is usable the device stands on id and aad, or is dropped
// with the first present name as its value.
// A device with no id, no usable name and no AAD id, but an internal IP
// address among its candidates, is named by that address: the dispatcher
// finds it with Defender's findbyip.
func (d *deviceSet) addFirst(id string, names []string, aad string) {
	name := firstUsableName(names)
	if strings.TrimSpace(id) == "" && strings.TrimSpace(aad) == "" && dnsNameProblem(name) != "" {
		for _, n := range names {
			if ip, ok := parseIP(strings.TrimSpace(n)); ok && normalizeIP(ip.String()) != "" {
				d.addIP(ip.String())
				return
			}
		}
	}
	d.add(id, name, aad)
}

// firstUsableName returns the first of names that can name a device, else
// the first non-empty one (for the dropped entry's value and reason).
func firstUsableName(names []string) string {
	first := ""
	for _, n := range names {
		n = strings.TrimSpace(n)
		if n == "" {
			continue
		}
		if dnsNameProblem(n) == "" {
			return n
		}
		if first == "" {
			first = n
		}
	}
	return first
}

// firstUsableID is firstUsableName for machine ids.
func firstUsableID(ids []string) string {
	first := ""
	for _, id := range ids {
		id = strings.TrimSpace(id)
		if id == "" {
			continue
		}
		if ValidMachineID(id) {
			return id
		}
		if first == "" {
			first = id
		}
	}
	return first
}

// addLists adds the devices of multivalue fields: ids from one field, names
// from another, of the same result. The n-th id goes with the n-th name only
// when the two lists can be paired: the same length, and not both in sorted
// order with no repeats when longer than one. That is what Splunk's values()
// gives, sorting each field on its own, so that its n-th id and n-th name
// need not belong to one device. Otherwise each value is its own device:
// that may leave a name and an id of one machine apart (the dispatcher finds
// the machine either way), but never puts one device's name on another's id.
func (d *deviceSet) addLists(ids, names []string) {
	ids, names = nonEmpty(ids), nonEmpty(names)
	if len(ids) == len(names) && (len(ids) == 1 || !(strictlySorted(ids) && strictlySorted(names))) {
		for i := range ids {
			d.addFirst(ids[i], names[i:i+1], "")
		}
		return
	}
	for _, id := range ids {
		d.add(id, "", "")
	}
	for i := range names {
		d.addFirst("", names[i:i+1], "")
	}
}

func strictlySorted(l []string) bool {
	for i := 1; i < len(l); i++ {
		if l[i-1] >= l[i] {
			return false
		}
	}
	return true
}

// firstUsableList returns, of lists (the values of candidate fields in
// order), the first that holds a usable value, else the first non-empty one.
func firstUsableList(lists [][]string, usable func(string) bool) []string {
	var first []string
	for _, l := range lists {
		l = nonEmpty(l)
		if len(l) == 0 {
			continue
		}
		if slices.ContainsFunc(l, usable) {
			return l
		}
		if first == nil {
			first = l
		}
	}
	return first
}

func usableName(s string) bool { return dnsNameProblem(s) == "" }

func (d *deviceSet) fill(a *Alert) {
	a.Devices = d.devices
	if a.Devices == nil {
		a.Devices = []Device{}
	}
	a.Dropped = d.dropped
	if d.more > 0 {
		a.Dropped = append(a.Dropped, DroppedDevice{Reason: fmt.Sprintf("%d more unusable devices not listed", d.more)})
	}
}

// ValidInternalIP reports whether s is an internal IP address in canonical
// form, as a device may be named by: IPv4 in 10/8, 172.16/12, 192.168/16 or
// 100.64/10 (shared address space), or IPv6 unique-local (fc00::/7); never
// loopback, link-local, multicast, unspecified or public. Defender can only
// tell machines apart by an address of their own network.
func ValidInternalIP(s string) bool {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" || a.Is4In6() || a.String() != s {
		return false
	}
	if a.IsLoopback() || a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() || a.IsMulticast() || a.IsUnspecified() {
		return false
	}
	if a.IsPrivate() {
		return true
	}
	return a.Is4() && netip.MustParsePrefix("100.64.0.0/10").Contains(a)
}

// normalizeIP returns the canonical form of an internal IP address (an
// IPv4-mapped IPv6 address as IPv4), or "" when it is not one.
func normalizeIP(s string) string {
	a, err := netip.ParseAddr(strings.TrimSpace(s))
	if err != nil {
		return ""
	}
	c := a.Unmap().String()
	if !ValidInternalIP(c) {
		return ""
	}
	return c
}

// addIP takes a device named only by an IP address: used when it is an
// internal address, dropped with the reason otherwise. The same address
// twice is one device.
func (d *deviceSet) addIP(ip string) {
	ip = strings.TrimSpace(ip)
	if ip == "" {
		return
	}
	c := normalizeIP(ip)
	if c == "" {
		d.drop(ip, "IP address is not an internal (private) address")
		return
	}
	for _, e := range d.devices {
		if e.IP == c {
			return
		}
	}
	if len(d.devices) >= MaxDevicesPerAlert {
		d.drop(c, fmt.Sprintf("more than %d devices in one alert", MaxDevicesPerAlert))
		return
	}
	d.devices = append(d.devices, Device{IP: c})
}

// hostFQDN joins a host name and its domain, as Sentinel splits them.
func hostFQDN(host, domain string) string {
	host, domain = strings.TrimSpace(host), strings.TrimSpace(domain)
	if host == "" || domain == "" || strings.Contains(host, ".") {
		return host
	}
	return host + "." + strings.TrimPrefix(domain, ".")
}

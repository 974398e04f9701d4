package alert

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/scanhook/scanhook/internal/domain"
)

// GenericMapping maps JSON paths of a body to the normalized fields
// (sources.generic.mapping in the service config).
//
// A path is dotted, with array indices as ".0" or "[0]": "event.hosts[0].name".
// A key that itself holds dots ("kibana.alert.uuid") is found too. Paths are
// relative to each alert; a path starting with "$." is taken from the body
// root instead (for envelope fields shared by all alerts).
type GenericMapping struct {
	// Alerts is the path to the array of alerts. Empty: the body itself,
	// one alert if it is an object, many if it is an array.
	Alerts string `yaml:"alerts"`
	// ID is required; the value must be a non-empty string or number.
	ID       string `yaml:"id"`
	Severity string `yaml:"severity"`
	// SeverityMap maps the source's severity words (case-insensitive) to
	// normalized severities. Words not in the map are read as the normalized
	// names themselves (informational/info, low, medium, high, critical),
	// and anything else is informational.
	SeverityMap     map[string]domain.Severity `yaml:"severity_map"`
	Title           string                     `yaml:"title"`
	Description     string                     `yaml:"description"`
	Category        string                     `yaml:"category"`
	DetectionSource string                     `yaml:"detection_source"`
	ThreatFamily    string                     `yaml:"threat_family"`
	Status          string                     `yaml:"status"`
	// Tags and MitreTechniques: a string or an array of strings.
	Tags            string `yaml:"tags"`
	MitreTechniques string `yaml:"mitre_techniques"`
	TenantID        string `yaml:"tenant_id"`
	// Time: an RFC 3339 timestamp.
	Time string `yaml:"time"`
	URL  string `yaml:"url"`
	// DeviceID, DNSName and AADDeviceID name one device per alert; each
	// may also point at an array (the n-th id goes with the n-th name).
	DeviceID    string `yaml:"device_id"`
	DNSName     string `yaml:"dns_name"`
	AADDeviceID string `yaml:"aad_device_id"`
	// IP names devices by internal IP address (a string or an array), used
	// only when the alert names no device otherwise: the dispatcher finds
	// the machine seen with the address at the alert's time.
	IP string `yaml:"ip"`
	// Devices reads devices from an array of objects.
	Devices *GenericDevices `yaml:"devices"`
	// SkipWhen records but does not act on alerts whose value at Path is
	// one of Values (case-insensitive), such as a "resolved" status.
	SkipWhen *GenericSkip `yaml:"skip_when"`
}

// GenericDevices reads devices from the array at Path; the other paths are
// relative to each item.
type GenericDevices struct {
	Path        string `yaml:"path"`
	DeviceID    string `yaml:"device_id"`
	DNSName     string `yaml:"dns_name"`
	AADDeviceID string `yaml:"aad_device_id"`
}

// GenericSkip: see GenericMapping.SkipWhen.
type GenericSkip struct {
	Path   string   `yaml:"path"`
	Values []string `yaml:"values"`
}

// maxPathParts bounds a configured path.
const maxPathParts = 32

// parsePath splits a mapping path into parts ("a.b[0]" → a, b, 0) and tells
// whether it starts at the body root ("$.").
func parsePath(p string) (parts []string, fromRoot bool, err error) {
	p = strings.TrimSpace(p)
	if p == "$" {
		return nil, true, nil
	}
	if rest, ok := strings.CutPrefix(p, "$."); ok {
		p, fromRoot = rest, true
	}
	if p == "" {
		return nil, fromRoot, errors.New("empty path")
	}
	for seg := range strings.SplitSeq(p, ".") {
		name, idx, hasIdx := strings.Cut(seg, "[")
		if name == "" && !hasIdx {
			return nil, false, fmt.Errorf("path %q has an empty part", p)
		}
		if name != "" {
			if strings.ContainsAny(name, "]") {
				return nil, false, fmt.Errorf("path %q has a stray ']'", p)
			}
			parts = append(parts, name)
		}
		for hasIdx {
			var num string
			var ok bool
			num, idx, ok = strings.Cut(idx, "]")
			if n, err := strconv.Atoi(num); !ok || err != nil || n < 0 {
				return nil, false, fmt.Errorf("path %q: an index must be [N] with N a number", p)
			}
			parts = append(parts, num)
			if idx == "" {
				break
			}
			if !strings.HasPrefix(idx, "[") {
				return nil, false, fmt.Errorf("path %q: text after ']' must start a new part with '.'", p)
			}
			idx = idx[1:]
		}
	}
	if len(parts) > maxPathParts {
		return nil, false, fmt.Errorf("path %q has more than %d parts", p, maxPathParts)
	}
	return parts, fromRoot, nil
}

// Validate checks the mapping: an id path is required, every path must
// parse and every severity_map value must be a normalized severity.
func (g *GenericMapping) Validate() error {
	if g == nil {
		return errors.New("no mapping")
	}
	var errs []error
	path := func(field, p string, required bool) {
		if p == "" {
			if required {
				errs = append(errs, fmt.Errorf("%s: required", field))
			}
			return
		}
		if _, _, err := parsePath(p); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", field, err))
		}
	}
	path("alerts", g.Alerts, false)
	path("id", g.ID, true)
	for _, f := range []struct{ name, p string }{
		{"severity", g.Severity}, {"title", g.Title}, {"description", g.Description},
		{"category", g.Category}, {"detection_source", g.DetectionSource},
		{"threat_family", g.ThreatFamily}, {"status", g.Status}, {"tags", g.Tags},
		{"mitre_techniques", g.MitreTechniques}, {"tenant_id", g.TenantID},
		{"time", g.Time}, {"url", g.URL}, {"device_id", g.DeviceID},
		{"dns_name", g.DNSName}, {"aad_device_id", g.AADDeviceID}, {"ip", g.IP},
	} {
		path(f.name, f.p, false)
	}
	for word, sev := range g.SeverityMap {
		if strings.TrimSpace(word) == "" {
			errs = append(errs, errors.New("severity_map: empty source word"))
		}
		if !sev.Valid() {
			errs = append(errs, fmt.Errorf("severity_map: %q maps to %q, which is not one of informational, low, medium, high, critical", word, sev))
		}
	}
	if d := g.Devices; d != nil {
		path("devices.path", d.Path, true)
		path("devices.device_id", d.DeviceID, false)
		path("devices.dns_name", d.DNSName, false)
		path("devices.aad_device_id", d.AADDeviceID, false)
		if d.DeviceID == "" && d.DNSName == "" {
			errs = append(errs, errors.New("devices: needs device_id or dns_name"))
		}
	}
	if s := g.SkipWhen; s != nil {
		path("skip_when.path", s.Path, true)
		if len(s.Values) == 0 {
			errs = append(errs, errors.New("skip_when.values: required"))
		}
	}
	return errors.Join(errs...)
}

// genericPath is a parsed mapping path, bound to the alert and body root.
type genericPath struct {
	parts    []string
	fromRoot bool
	set      bool
}

func compilePath(p string) genericPath {
	if p == "" {
		return genericPath{}
	}
	parts, root, _ := parsePath(p) // Validate has run
	return genericPath{parts: parts, fromRoot: root, set: true}
}

func (p genericPath) at(item, root node) node {
	if !p.set {
		return node{}
	}
	if p.fromRoot {
		return root.lookupParts(p.parts)
	}
	return item.lookupParts(p.parts)
}

// list reads a string, a number, or an array of them.
func (r *reader) list(n node) []string {
	if a, ok := n.v.([]any); ok {
		out := make([]string, 0, len(a))
		for i := range a {
			if s := r.scalar(n.index(i)); s != "" {
				out = append(out, s)
			}
		}
		return out
	}
	if s := r.scalar(n); s != "" {
		return []string{s}
	}
	return nil
}

func decodeGeneric(root node, body []byte, opts Options) ([]Alert, error) {
	g := opts.Generic
	p := compilePath
	id, sev, title, desc := p(g.ID), p(g.Severity), p(g.Title), p(g.Description)
	cat, det, fam, status := p(g.Category), p(g.DetectionSource), p(g.ThreatFamily), p(g.Status)
	tags, mitre, tenant, tm, u := p(g.Tags), p(g.MitreTechniques), p(g.TenantID), p(g.Time), p(g.URL)
	devID, devDNS, devAAD, devIP := p(g.DeviceID), p(g.DNSName), p(g.AADDeviceID), p(g.IP)
	var devs, subID, subDNS, subAAD, skip genericPath
	if g.Devices != nil {
		devs, subID, subDNS, subAAD = p(g.Devices.Path), p(g.Devices.DeviceID), p(g.Devices.DNSName), p(g.Devices.AADDeviceID)
	}
	if g.SkipWhen != nil {
		skip = p(g.SkipWhen.Path)
	}
	sevMap := make(map[string]domain.Severity, len(g.SeverityMap))
	for k, v := range g.SeverityMap {
		sevMap[strings.ToLower(strings.TrimSpace(k))] = v
	}

	one := func(n node, raw json.RawMessage) (Alert, error) {
		var r reader
		idNode := id.at(n, root)
		rawID := r.scalar(idNode)
		a := Alert{
			Severity:        normSeverity(sevMap, r.scalar(sev.at(n, root))),
			Title:           cleanLine(r.scalar(title.at(n, root)), MaxTitleLen),
			Description:     cleanText(r.scalar(desc.at(n, root)), MaxDescriptionLen),
			Category:        cleanLine(r.scalar(cat.at(n, root)), MaxFieldLen),
			DetectionSource: cleanLine(r.scalar(det.at(n, root)), MaxFieldLen),
			ThreatFamily:    cleanLine(r.scalar(fam.at(n, root)), MaxFieldLen),
			Status:          cleanLine(r.scalar(status.at(n, root)), MaxFieldLen),
			Tags:            cleanList(r.list(tags.at(n, root)), MaxFieldLen),
			MitreTechniques: cleanList(r.list(mitre.at(n, root)), MaxFieldLen),
			TenantID:        cleanLine(r.scalar(tenant.at(n, root)), MaxFieldLen),
			Time:            parseTime(r.scalar(tm.at(n, root))),
			URL:             cleanURL(r.scalar(u.at(n, root))),
			Raw:             raw,
		}
		if skip.set {
			v := strings.TrimSpace(r.scalar(skip.at(n, root)))
			for _, want := range g.SkipWhen.Values {
				if v != "" && strings.EqualFold(v, strings.TrimSpace(want)) {
					a.Skip = fmt.Sprintf("%s is %s: skipped by the generic mapping's skip_when", g.SkipWhen.Path, cleanDropped(v))
					break
				}
			}
		}
		var ds deviceSet
		ids, names, aads := r.list(devID.at(n, root)), r.list(devDNS.at(n, root)), r.list(devAAD.at(n, root))
		for i := 0; i < max(len(ids), len(names), len(aads)); i++ {
			var did, name, aad string
			if i < len(ids) {
				did = ids[i]
			}
			if i < len(names) {
				name = names[i]
			}
			if i < len(aads) {
				aad = aads[i]
			}
			ds.add(did, name, aad)
		}
		if devs.set {
			dn := devs.at(n, root)
			items := []node{dn}
			if arr, ok := dn.v.([]any); ok {
				items = items[:0]
				for i := range arr {
					items = append(items, dn.index(i))
				}
			} else if dn.v != nil {
				r.object(dn)
			}
			for _, it := range items {
				if it.v == nil || r.object(it) == nil {
					continue
				}
				ds.add(r.scalar(subID.at(it, root)), r.scalar(subDNS.at(it, root)), r.scalar(subAAD.at(it, root)))
			}
		}
		if devIP.set && len(ds.devices) == 0 {
			for _, ip := range r.list(devIP.at(n, root)) {
				ds.addIP(ip)
			}
		}
		if r.err != nil {
			return Alert{}, r.err
		}
		if rawID == "" {
			return Alert{}, &FieldError{Field: idNode.label(), Msg: "missing or empty: the alert id (mapped by id) is required"}
		}
		var err error
		if a.ID, err = alertID(idNode, rawID); err != nil {
			return Alert{}, err
		}
		ds.fill(&a)
		return a, nil
	}

	if g.Alerts != "" {
		ap := compilePath(g.Alerts)
		list := ap.at(root, root)
		if list.v == nil {
			return nil, &FieldError{Field: list.label(), Msg: "missing: the mapping's alerts path finds nothing"}
		}
		return eachItem(list, func() ([]json.RawMessage, error) {
			raw, ok := rawLookup(body, ap.parts)
			if !ok {
				return nil, errors.New("not found")
			}
			var items []json.RawMessage
			err := json.Unmarshal(raw, &items)
			return items, err
		}, one)
	}
	switch root.v.(type) {
	case []any:
		return eachItem(root, func() ([]json.RawMessage, error) { return rawItems(body, "") }, one)
	case map[string]any:
		a, err := one(root, json.RawMessage(bytes.Clone(body)))
		if err != nil {
			return nil, err
		}
		return []Alert{a}, nil
	}
	return nil, root.typeErr("an object or an array")
}

// rawLookup finds the raw bytes at parts the way node.lookupParts finds the
// value (longest dotted key first, non-null only), so that Raw is each
// alert's text as sent.
func rawLookup(raw json.RawMessage, parts []string) (json.RawMessage, bool) {
	if len(parts) == 0 {
		return raw, !bytes.Equal(bytes.TrimSpace(raw), []byte("null"))
	}
	t := bytes.TrimSpace(raw)
	if len(t) == 0 {
		return nil, false
	}
	switch t[0] {
	case '{':
		var m map[string]json.RawMessage
		if json.Unmarshal(t, &m) != nil {
			return nil, false
		}
		for i := len(parts); i >= 1; i-- {
			c, ok := m[strings.Join(parts[:i], ".")]
			if !ok || bytes.Equal(bytes.TrimSpace(c), []byte("null")) {
				continue
			}
			if r, ok := rawLookup(c, parts[i:]); ok {
				return r, true
			}
		}
	case '[':
		var a []json.RawMessage
		if json.Unmarshal(t, &a) != nil {
			return nil, false
		}
		if i, err := strconv.Atoi(parts[0]); err == nil && i >= 0 && i < len(a) {
			return rawLookup(a[i], parts[1:])
		}
	}
	return nil, false
}

package alert

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// AlertmanagerOptions names the labels that carry an alert's device and
// severity (sources.alertmanager.labels in the service config). Empty fields
// take the defaults.
type AlertmanagerOptions struct {
	// DeviceIDLabels: the first one that holds a machine id (40 hex) gives
	// it. Default: machine_id, mde_device_id.
	DeviceIDLabels []string `yaml:"device_id_labels"`
	// DNSNameLabels: the first one whose value (":port" removed, as
	// instance is usually host:port) is a usable host name gives the DNS
	// name; an IP address or localhost is skipped for the next label.
	// Default: instance, host, hostname, host_name, nodename. The service
	// config sets it from sources.alertmanager.device_fields too.
	DNSNameLabels []string `yaml:"dns_name_labels"`
	// SeverityLabel holds the severity word. Default: severity.
	SeverityLabel string `yaml:"severity_label"`
}

// Default label names of AlertmanagerOptions.
var (
	defaultDeviceIDLabels = []string{"machine_id", "mde_device_id"}
	defaultDNSNameLabels  = []string{"instance", "host", "hostname", "host_name", "nodename"}
)

const defaultSeverityLabel = "severity"

var labelNameRE = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)

// Validate checks that every configured name is a Prometheus label name.
func (o AlertmanagerOptions) Validate() error {
	var errs []error
	check := func(field, name string) {
		if !labelNameRE.MatchString(name) {
			errs = append(errs, fmt.Errorf("%s: %q is not a Prometheus label name", field, name))
		}
	}
	for _, l := range o.DeviceIDLabels {
		check("device_id_labels", l)
	}
	for _, l := range o.DNSNameLabels {
		check("dns_name_labels", l)
	}
	if o.SeverityLabel != "" {
		check("severity_label", o.SeverityLabel)
	}
	return errors.Join(errs...)
}

func (o AlertmanagerOptions) withDefaults() AlertmanagerOptions {
	if len(o.DeviceIDLabels) == 0 {
		o.DeviceIDLabels = defaultDeviceIDLabels
	}
	if len(o.DNSNameLabels) == 0 {
		o.DNSNameLabels = defaultDNSNameLabels
	}
	if o.SeverityLabel == "" {
		o.SeverityLabel = defaultSeverityLabel
	}
	return o
}

// decodeAlertmanager reads Alertmanager's webhook body (version 4), or a bare
// array of alerts as Alertmanager's own API takes them (what
// Falcosidekick-style senders post).
func decodeAlertmanager(root node, body []byte, opts Options) ([]Alert, error) {
	o := opts.Alertmanager.withDefaults()
	list := root
	rawKey := ""
	var groupStatus string
	switch root.v.(type) {
	case []any:
	case map[string]any:
		var r reader
		version := root.get("version")
		if v := r.scalar(version); r.err == nil && v != "" && v != "4" {
			return nil, &FieldError{Field: version.path, Msg: "unsupported webhook version: scanhook reads version 4"}
		}
		groupStatus = r.str(root.get("status"))
		if r.err != nil {
			return nil, r.err
		}
		list = root.get("alerts")
		rawKey = "alerts"
		if list.v == nil {
			return nil, &FieldError{Field: list.path, Msg: "missing: an Alertmanager webhook body has alerts"}
		}
	default:
		return nil, root.typeErr("an object")
	}
	return eachItem(list, func() ([]json.RawMessage, error) { return rawItems(body, rawKey) }, func(n node, raw json.RawMessage) (Alert, error) {
		var r reader
		labelsNode := n.get("labels")
		labels, err := stringMap(labelsNode)
		if err != nil {
			return Alert{}, err
		}
		annotations, err := stringMap(n.get("annotations"))
		if err != nil {
			return Alert{}, err
		}
		fpNode := n.get("fingerprint")
		fp := strings.TrimSpace(stripControls(r.str(fpNode)))
		startsAt := strings.TrimSpace(r.str(n.get("startsAt")))
		status := r.str(n.get("status"))
		if status == "" {
			status = groupStatus
		}
		a := Alert{
			Severity:    normSeverity(alertmanagerSeverities, labels[o.SeverityLabel]),
			Title:       cleanLine(firstNonEmpty(annotations["summary"], labels["alertname"]), MaxTitleLen),
			Description: cleanText(annotations["description"], MaxDescriptionLen),
			Category:    cleanLine(labels["alertname"], MaxFieldLen),
			Status:      cleanLine(status, MaxFieldLen),
			Time:        parseTime(startsAt),
			URL:         cleanURL(r.str(n.get("generatorURL"))),
			Raw:         raw,
		}
		if r.err != nil {
			return Alert{}, r.err
		}
		if !strings.EqualFold(status, "firing") && status != "" {
			a.Skip = "status is " + cleanDropped(status) + ": scanhook acts on firing alerts only"
		}
		if fp == "" {
			if len(labels) == 0 {
				return Alert{}, &FieldError{Field: labelsNode.label(), Msg: "missing or empty, and no fingerprint: the alert cannot be identified"}
			}
			fp = labelsHash(labels)
		}
		// One alert id per firing episode: Alertmanager repeats a firing
		// alert with the same fingerprint and startsAt (a duplicate), while a
		// new episode of the same alert has a new startsAt and must not be
		// taken for a duplicate of the old one.
		id := fp
		if startsAt != "" {
			id = fp + "@" + startsAt
		}
		if a.ID, err = alertID(fpNode, id); err != nil {
			return Alert{}, err
		}
		var ds deviceSet
		ds.addFirst(firstUsableID(labelValues(labels, o.DeviceIDLabels, false)), labelValues(labels, o.DNSNameLabels, true), "")
		ds.fill(&a)
		return a, nil
	})
}

// stringMap reads a label or annotation set: an object of strings.
func stringMap(n node) (map[string]string, error) {
	m, err := n.object()
	if err != nil {
		return nil, err
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		s, err := node{v: v, path: n.child(k)}.str()
		if err != nil {
			return nil, err
		}
		out[k] = s
	}
	return out, nil
}

// labelsHash identifies an alert without a fingerprint by its label set,
// sorted so that the order of the body does not matter.
func labelsHash(labels map[string]string) string {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	h := sha256.New()
	for _, k := range keys {
		// Length-prefixed, so that no two label sets hash the same input.
		fmt.Fprintf(h, "%d:%s%d:%s", len(k), k, len(labels[k]), labels[k])
	}
	return "labels-" + hex.EncodeToString(h.Sum(nil))[:32]
}

// labelValues returns the values of the named labels, in the order of names,
// with a ":port" suffix removed when port is set.
func labelValues(labels map[string]string, names []string, port bool) []string {
	out := make([]string, 0, len(names))
	for _, n := range names {
		v := strings.TrimSpace(labels[n])
		if port {
			v = stripPort(v)
		}
		out = append(out, v)
	}
	return out
}

func firstNonEmpty(ss ...string) string {
	for _, s := range ss {
		if s = strings.TrimSpace(s); s != "" {
			return s
		}
	}
	return ""
}

// stripPort removes a ":port" suffix (Prometheus' instance label).
func stripPort(s string) string {
	if _, isIP := parseIP(s); isIP {
		return s // an IPv6 address, whose last group is not a port
	}
	i := strings.LastIndexByte(s, ':')
	if i < 0 || i == len(s)-1 || strings.Trim(s[i+1:], "0123456789") != "" {
		return s
	}
	return s[:i]
}

package alert

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode"
)

// SplunkOptions configures the splunk source (sources.splunk in the service
// config). The zero value gives the defaults.
type SplunkOptions struct {
	// DeviceFields are the result fields that name the device, tried in
	// order: the first that holds a usable host name wins, and a field
	// holding only IP addresses (CIM dest often does) or localhost is
	// skipped. Default: dest, dest_host, dest_dns, dest_nt_host, host.
	DeviceFields []string
}

// defaultSplunkDeviceFields: dest is the CIM field for the affected device;
// dest_host, dest_dns and dest_nt_host are its name-only variants, for when
// dest holds an IP address; host is last because it is Splunk's default
// field and may name a forwarder.
var defaultSplunkDeviceFields = []string{"dest", "dest_host", "dest_dns", "dest_nt_host", "host"}

// splunkIDFields hold the Defender machine id, tried in order.
var splunkIDFields = []string{"machineId", "mde_device_id"}

// ValidateFieldNames checks configured device_fields: each a non-empty name
// without spaces or control characters.
func ValidateFieldNames(names []string) error {
	var errs []error
	for _, n := range names {
		if strings.TrimSpace(n) == "" || strings.IndexFunc(n, func(r rune) bool { return unicode.IsSpace(r) || isControl(r) }) >= 0 {
			errs = append(errs, fmt.Errorf("%q is not a field name", n))
		}
	}
	return errors.Join(errs...)
}

// decodeSplunk reads the body of Splunk's webhook alert action: the first
// result row of the search under "result", and the search's sid.
func decodeSplunk(root node, body []byte, opts Options) ([]Alert, error) {
	if m, err := root.object(); err != nil || m == nil {
		return nil, root.typeErr("an object")
	}
	fields := opts.Splunk.DeviceFields
	if len(fields) == 0 {
		fields = defaultSplunkDeviceFields
	}
	var r reader
	idNode := root.get("sid")
	rawID := r.str(idNode)
	res := root.get("result")
	r.object(res)
	a := Alert{
		Title:       cleanLine(r.first(root.get("search_name"), res.get("search_name"), res.get("title")), MaxTitleLen),
		Description: cleanText(r.str(res.get("description")), MaxDescriptionLen),
		Category:    cleanLine(r.str(res.get("category")), MaxFieldLen),
		URL:         cleanURL(r.str(root.get("results_link"))),
		Raw:         json.RawMessage(bytes.Clone(body)),
	}
	sev := r.scalar(res.get("severity"))
	if sev == "" {
		sev = r.scalar(res.get("urgency"))
	}
	a.Severity = normSeverity(splunkSeverities, sev)
	// A field is one value or, for a multivalue field, an array. Of the
	// candidate fields, the first holding a usable value gives the ids and
	// the names; addLists decides whether they pair up.
	idLists := make([][]string, len(splunkIDFields))
	for i, f := range splunkIDFields {
		idLists[i] = r.strs(res.get(f))
	}
	nameLists := make([][]string, len(fields))
	for i, f := range fields {
		nameLists[i] = r.strs(res.get(f))
	}
	if r.err != nil {
		return nil, r.err
	}
	id, err := alertID(idNode, rawID)
	if err != nil {
		return nil, err
	}
	a.ID = id
	var ds deviceSet
	ds.addLists(firstUsableList(idLists, ValidMachineID), firstUsableList(nameLists, usableName))
	ds.fill(&a)
	return []Alert{a}, nil
}

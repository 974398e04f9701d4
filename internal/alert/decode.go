package alert

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/scanhook/scanhook/internal/domain"
)

// Limits on what one body may make scanhook hold. A hostile or broken sender
// must not be able to blow memory or flood the store through one request.
const (
	// MaxAlertsPerBody: a body with more alerts is refused as a whole
	// (a FieldError), rather than cut, so that no alert is silently lost.
	MaxAlertsPerBody = 1000
	// MaxDevicesPerAlert: further devices are listed in Dropped.
	MaxDevicesPerAlert = 100
	// MaxDroppedPerAlert: further dropped devices are only counted.
	MaxDroppedPerAlert = 100
	// MaxIDLen caps an alert id. Sentinel incident ARM ids reach ~350
	// bytes, so 256 would refuse real ones. A longer id is a FieldError,
	// never truncated: two alerts must not collapse into one id.
	MaxIDLen = 512
	// MaxTitleLen, MaxDescriptionLen, MaxFieldLen and MaxURLLen cap the
	// free-text fields (truncated on a UTF-8 boundary).
	MaxTitleLen       = 1024
	MaxDescriptionLen = 8192
	MaxFieldLen       = 256
	MaxURLLen         = 2048
	// MaxListLen caps tags and MITRE techniques per alert.
	MaxListLen = 64
	// maxDroppedValueLen caps DroppedDevice.Value.
	maxDroppedValueLen = 128
)

// ErrUnknownSource is returned by Decode for a source name it does not know.
var ErrUnknownSource = errors.New("alert: unknown source")

// ErrNoMapping is returned by Decode for the generic source when no mapping
// is configured: a server-side configuration problem, not a bad body.
var ErrNoMapping = errors.New("alert: the generic source has no mapping configured (sources.generic.mapping)")

// FieldError says why a body is unusable. Field is a JSON path into the body,
// such as "object.properties.severity" or "alerts[2].labels"; "body" is the
// body as a whole. Msg never repeats the offending value.
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return fmt.Sprintf("%s: %s", e.Field, e.Msg) }

// Options configures the sources that need it. The zero value gives the
// documented defaults.
type Options struct {
	Alertmanager AlertmanagerOptions
	Splunk       SplunkOptions
	// Generic is the mapping for the generic source; nil makes that source
	// answer ErrNoMapping.
	Generic *GenericMapping
}

// Decode turns one request body from source into alerts. One body may hold
// many alerts and one alert many devices. A body that cannot be used gives a
// *FieldError; an unknown source gives ErrUnknownSource. Every returned alert
// has a non-empty ID, its Source set, a normalized Severity, and only checked
// devices. Decode never panics, whatever the body.
func Decode(source string, body []byte, opts Options) ([]Alert, error) {
	var dec func(node, []byte, Options) ([]Alert, error)
	switch source {
	case domain.SourceDefender:
		dec = decodeDefender
	case domain.SourceGraph:
		dec = decodeGraph
	case domain.SourceSentinel:
		dec = decodeSentinel
	case domain.SourceAzureMonitor:
		dec = decodeAzureMonitor
	case domain.SourceSplunk:
		dec = decodeSplunk
	case domain.SourceElastic:
		dec = decodeElastic
	case domain.SourceAlertmanager:
		dec = decodeAlertmanager
	case domain.SourceGeneric:
		if opts.Generic == nil {
			return nil, ErrNoMapping
		}
		if err := opts.Generic.Validate(); err != nil {
			return nil, fmt.Errorf("generic mapping: %w", err)
		}
		dec = decodeGeneric
	default:
		return nil, fmt.Errorf("%w %q", ErrUnknownSource, cleanDropped(source))
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, &FieldError{Field: rootPath, Msg: "empty body"}
	}
	v, err := parseJSON(body)
	if err != nil {
		return nil, &FieldError{Field: rootPath, Msg: "not valid JSON: " + jsonErrText(err)}
	}
	alerts, err := dec(node{v: v}, body, opts)
	if err != nil {
		return nil, err
	}
	for i := range alerts {
		alerts[i].Source = source
		if alerts[i].Ref == "" {
			alerts[i].Ref = DefaultRef(&alerts[i])
		}
		if alerts[i].Devices == nil {
			alerts[i].Devices = []Device{}
		}
	}
	return alerts, nil
}

// jsonErrText keeps only the position-bearing part of a JSON error: the
// message of encoding/json never quotes more than one character of input.
func jsonErrText(err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("%s (at byte %d)", se.Error(), se.Offset)
	}
	return err.Error()
}

// rawItems returns the raw bytes of each element of the array found under key
// in the top-level object of body (key "" means body itself is the array), so
// that Alert.Raw holds each alert exactly as it was sent. The body has been
// parsed already: the elements are found by skipping over it, not by parsing
// it again. They share one copy of the array, so that Raw does not hold on
// to the caller's buffer.
func rawItems(body []byte, key string) ([]json.RawMessage, error) {
	spans, err := arrayItemSpans(body, key)
	if err != nil {
		return nil, fmt.Errorf("raw items under %q: %w", key, err)
	}
	items := make([]json.RawMessage, len(spans))
	if len(spans) == 0 {
		return items, nil
	}
	base := spans[0][0]
	all := bytes.Clone(body[base:spans[len(spans)-1][1]])
	for i, s := range spans {
		// Full slice expressions: an append to one Raw must not write
		// over the next.
		items[i] = all[s[0]-base : s[1]-base : s[1]-base]
	}
	return items, nil
}

// listOrSingle handles the bodies that are one alert object or a list of them
// under key ("value" for the Microsoft APIs). It calls one for each alert
// with the alert's node and raw bytes.
func listOrSingle(root node, body []byte, key string, one func(node, json.RawMessage) (Alert, error)) ([]Alert, error) {
	if m, err := root.object(); err != nil || m == nil {
		return nil, root.typeErr("an object")
	}
	list := root.get(key)
	if list.v == nil {
		a, err := one(root, json.RawMessage(bytes.Clone(body)))
		if err != nil {
			return nil, err
		}
		return []Alert{a}, nil
	}
	return eachItem(list, func() ([]json.RawMessage, error) { return rawItems(body, key) }, one)
}

// eachItem decodes every element of the array node list, which must hold
// objects. raws gives each element's raw bytes, in order.
func eachItem(list node, raws func() ([]json.RawMessage, error), one func(node, json.RawMessage) (Alert, error)) ([]Alert, error) {
	items, err := list.array()
	if err != nil {
		return nil, err
	}
	if len(items) > MaxAlertsPerBody {
		return nil, &FieldError{Field: list.path, Msg: fmt.Sprintf("more than %d alerts in one body", MaxAlertsPerBody)}
	}
	if len(items) == 0 {
		return []Alert{}, nil
	}
	rs, err := raws()
	if err != nil || len(rs) != len(items) {
		// Cannot happen for a body that parsed; keep Raw usable anyway.
		rs = make([]json.RawMessage, len(items))
		for i, it := range items {
			rs[i], _ = json.Marshal(it)
		}
	}
	out := make([]Alert, 0, len(items))
	for i := range items {
		n := list.index(i)
		if _, err := n.object(); err != nil {
			return nil, err
		}
		a, err := one(n, rs[i])
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

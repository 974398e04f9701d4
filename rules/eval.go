package rules

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"strings"

	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/interpreter"

	"github.com/scanhook/scanhook/internal/alert"
	"github.com/scanhook/scanhook/internal/domain"
)

// evaluation holds what one Evaluate computes at most once: the alert as
// CEL sees it and the decoded raw body.
type evaluation struct {
	rs  *Ruleset
	a   *alert.Alert
	cel *celState // nil unless some rule uses CEL

	sevRank int
	vals    [fRaw]values // the alert's fields, then the device's per device

	rawDone bool
	raw     any
	rawVals [][]string
	rawHave []bool
	notes   []string // CEL runtime failures, reported when nothing matched
}

// Evaluate decides, for each device of a, which rule applies: the rules
// are tried in order and the first match wins (a matching `scan: none`
// rule stops there too). It returns one Decision per usable device, in
// a.Devices order, then one per dropped device (Device nil, Scan none,
// Reason "device dropped: …"). A skipped alert (a.Skip set) gets a Scan
// none decision per device, or a single one with Device nil; an alert with
// no usable device gets a single Device-nil decision whose reason lists the
// dropped devices.
func (rs *Ruleset) Evaluate(a *alert.Alert) []Decision {
	base := Decision{AlertID: a.ID, Source: a.Source, Scan: domain.ScanNone}
	if a.Skip != "" {
		if len(a.Devices) == 0 {
			d := base
			d.Reason = a.Skip
			return []Decision{d}
		}
		devs, out := newDecisions(a.Devices, 0)
		for i := range devs {
			d := base
			d.Device = &devs[i]
			d.Reason = a.Skip
			out = append(out, d)
		}
		return out
	}
	if len(a.Devices) == 0 {
		d := base
		d.Reason = "no usable device"
		if len(a.Dropped) > 0 {
			parts := make([]string, len(a.Dropped))
			for i, dr := range a.Dropped {
				parts[i] = dropped(dr)
			}
			d.Reason += ": " + strings.Join(parts, "; ")
		}
		return []Decision{d}
	}

	devs, out := newDecisions(a.Devices, len(a.Dropped))
	ev := evaluation{rs: rs, a: a, sevRank: a.Severity.Rank()}
	ev.vals = [fRaw]values{
		fSource:          {one: a.Source},
		fSeverity:        {one: string(a.Severity)},
		fTitle:           {one: a.Title},
		fCategory:        {one: a.Category},
		fDetectionSource: {one: a.DetectionSource},
		fThreatFamily:    {one: a.ThreatFamily},
		fStatus:          {one: a.Status},
		fMitreTechniques: {many: a.MitreTechniques, isList: true},
		fTags:            {many: a.Tags, isList: true},
		fTenantID:        {one: a.TenantID},
	}
	if rs.usesCEL {
		// devs is a copy of a.Devices, so devs[i] is the state's devs[i].
		// The adapter is always newCELEnv's.
		ev.cel = newCELState(rs.adapter.(*celTypes), a)
	}
	for i := range devs {
		out = append(out, ev.decide(base, i, &devs[i]))
	}
	for _, dr := range a.Dropped {
		d := base
		d.Reason = "device dropped: " + dropped(dr)
		out = append(out, d)
	}
	return out
}

// decisionBuf holds the decisions of the usual alert (one device, none
// dropped) together with the copy of the device they point to, so that
// they cost one allocation rather than two.
type decisionBuf struct {
	out [1]Decision
	dev [1]alert.Device
}

// newDecisions returns a copy of devices, so that decisions do not point
// into the caller's alert, and an empty slice with room for a decision per
// device and extra more.
func newDecisions(devices []alert.Device, extra int) ([]alert.Device, []Decision) {
	var devs []alert.Device
	var out []Decision
	if len(devices) == 1 && extra == 0 {
		buf := &decisionBuf{}
		devs, out = buf.dev[:], buf.out[:0]
	} else {
		devs, out = make([]alert.Device, len(devices)), make([]Decision, 0, len(devices)+extra)
	}
	copy(devs, devices)
	return devs, out
}

func dropped(d alert.DroppedDevice) string {
	return strconv.Quote(clip(d.Value)) + " (" + d.Reason + ")"
}

func (ev *evaluation) decide(base Decision, i int, dev *alert.Device) Decision {
	d := base
	d.Device = dev
	rs := ev.rs
	ev.notes = ev.notes[:0]
	ev.vals[fDeviceDNSName] = values{one: dev.DNSName}
	ev.vals[fDeviceID] = values{one: dev.ID}
	if rs.usesCEL {
		ev.cel.device = &ev.cel.alert.devs[i]
	}
	for _, r := range rs.rules {
		if !ev.matches(r) {
			continue
		}
		d.Rule = r.name
		d.Scan = r.scan
		d.Reason = ev.explain(r)
		if len(ev.notes) > 0 {
			// An earlier rule might have matched had its `when` not failed.
			d.Reason += " (" + strings.Join(ev.notes, "; ") + ")"
		}
		if r.scan == domain.ScanNone {
			return d
		}
		d.Cooldown = r.cooldown
		d.DryRun = r.dryRun
		tmpl := r.comment
		if tmpl == nil {
			tmpl = rs.defaultTmpl
		}
		data := commentData{Rule: r.name, Alert: ev.a, Device: dev}
		c, err := tmpl.render(&data, rs.maxComment)
		switch {
		case err != nil:
			// The template ran at load; only this alert's data can make it
			// fail (an index out of range). Fall back to the built-in text.
			c, _ = rs.builtinTmpl.render(&data, rs.maxComment)
			d.Reason += "; comment template failed, built-in comment used: " + trimTemplateErr(err)
		case c == "":
			// Defender requires a comment.
			c, _ = rs.builtinTmpl.render(&data, rs.maxComment)
			d.Reason += "; comment rendered empty, built-in comment used"
		}
		d.Comment = c
		return d
	}
	d.Reason = "no rule matched"
	if len(ev.notes) > 0 {
		d.Reason += " (" + strings.Join(ev.notes, "; ") + ")"
	}
	return d
}

func (ev *evaluation) matches(r *rule) bool {
	for i := range r.conds {
		c := &r.conds[i]
		switch {
		case c.field == fSeverity && ev.sevRank >= 0:
			if c.sevMask&(1<<ev.sevRank) == 0 {
				return false
			}
		case c.in != nil && c.field != fRaw:
			if !inValues(c.in, &ev.vals[c.field]) {
				return false
			}
		case c.field == fRaw:
			v := values{many: ev.rawValues(c.raw), isList: true}
			if !c.m.match(v) {
				return false
			}
		default:
			if !c.m.match(ev.vals[c.field]) {
				return false
			}
		}
	}
	if r.when == nil {
		return true
	}
	out, _, err := r.when.Eval(ev.cel)
	if err != nil {
		var cancelled interpreter.EvalCancelledError
		limit := errors.As(err, &cancelled) && cancelled.Cause == interpreter.CostLimitExceeded
		msg := err.Error()
		if limit {
			msg = "stopped at the cost limit (" + strconv.FormatUint(ev.rs.celCostLimit, 10) + ") for this alert"
		}
		ev.notes = append(ev.notes, "rule "+strconv.Quote(r.name)+": when failed: "+msg)
		if ev.rs.whenFailed != nil {
			ev.rs.whenFailed(r.name, limit)
		}
		return false
	}
	return out == types.True
}

// inValues is inMatcher.match without the interface call.
func inValues(wants []string, v *values) bool {
	if !v.isList {
		for _, w := range wants {
			if strings.EqualFold(v.one, w) {
				return true
			}
		}
		return false
	}
	for _, s := range v.many {
		for _, w := range wants {
			if strings.EqualFold(s, w) {
				return true
			}
		}
	}
	return false
}

func (ev *evaluation) values(c *cond) values {
	if c.field == fRaw {
		return values{many: ev.rawValues(c.raw), isList: true}
	}
	return ev.vals[c.field]
}

// rawValues looks a raw.<path> up in the alert's own body, decoding the
// body at most once per Evaluate. Arrays on the way are searched
// element-wise (raw.evidence.deviceDnsName finds every evidence item's
// name; a numeric segment indexes instead); numbers and booleans compare by
// their JSON text.
func (ev *evaluation) rawValues(idx int) []string {
	if !ev.rawDone {
		ev.rawDone = true
		n := len(ev.rs.rawPaths)
		ev.rawVals, ev.rawHave = make([][]string, n), make([]bool, n)
		if len(ev.a.Raw) > 0 {
			dec := json.NewDecoder(bytes.NewReader(ev.a.Raw))
			dec.UseNumber()
			// Decoding into a local keeps ev itself off the heap.
			var raw any
			if err := dec.Decode(&raw); err == nil {
				ev.raw = raw
			}
		}
	}
	if !ev.rawHave[idx] {
		ev.rawHave[idx] = true
		ev.rawVals[idx] = lookupRaw(ev.raw, ev.rs.rawPaths[idx], nil)
	}
	return ev.rawVals[idx]
}

// maxRawValues bounds what one path can collect from a hostile body.
const maxRawValues = 1000

func lookupRaw(v any, path []string, out []string) []string {
	if len(out) >= maxRawValues {
		return out
	}
	if len(path) == 0 {
		switch x := v.(type) {
		case string:
			return append(out, x)
		case json.Number:
			return append(out, x.String())
		case bool:
			return append(out, strconv.FormatBool(x))
		case []any:
			for _, e := range x {
				switch e.(type) {
				case string, json.Number, bool:
					out = lookupRaw(e, nil, out)
				}
			}
		}
		return out
	}
	switch x := v.(type) {
	case map[string]any:
		if next, ok := x[path[0]]; ok {
			return lookupRaw(next, path[1:], out)
		}
	case []any:
		if i, err := strconv.Atoi(path[0]); err == nil {
			if i >= 0 && i < len(x) {
				return lookupRaw(x[i], path[1:], out)
			}
			return out
		}
		for _, e := range x {
			out = lookupRaw(e, path, out)
		}
	}
	return out
}

// explain words why r matched; it runs once per decision, never in the
// matching loop.
func (ev *evaluation) explain(r *rule) string {
	var b strings.Builder
	n := 32 + len(r.name)
	for i := range r.conds {
		c := &r.conds[i]
		n += len(c.name) + len(c.desc) + 8
		v := ev.values(c)
		if !v.isList {
			n += min(len(v.one), 4*clipRunes)
		}
		for j, s := range v.many {
			if j == 8 {
				break
			}
			n += min(len(s), 4*clipRunes) + 3
		}
	}
	if r.when != nil {
		n += len(r.whenText) + 16
	}
	b.Grow(n)
	b.WriteString("rule ")
	b.WriteString(strconv.Quote(r.name))
	b.WriteString(" matched")
	if len(r.conds) == 0 && r.when == nil {
		b.WriteString(" (no conditions)")
		return b.String()
	}
	b.WriteString(": ")
	for i := range r.conds {
		c := &r.conds[i]
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(c.name)
		b.WriteByte(' ')
		v := ev.values(c)
		v.write(&b)
		b.WriteByte(' ')
		b.WriteString(c.desc)
	}
	if r.when != nil {
		if len(r.conds) > 0 {
			b.WriteString("; ")
		}
		b.WriteString("when ")
		b.WriteString(r.whenQuoted)
	}
	return b.String()
}

package rules

import (
	"errors"
	"io"
	"slices"
	"strings"
	"text/template"
	"text/template/parse"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/scanhook/scanhook/internal/alert"
	"github.com/scanhook/scanhook/internal/domain"
)

// commentData is what a comment template sees.
type commentData struct {
	Rule   string
	Alert  *alert.Alert
	Device *alert.Device

	ref string // .Alert.Ref, or its default when the alert has none
}

// commentTmpl renders a comment. Templates that are only text and plain
// field references ({{.Rule}}, {{.Alert.ID}}, {{.Device.DNSName}}, the
// usual case) are rendered directly, without text/template's reflection;
// anything else goes through text/template.
type commentTmpl struct {
	t       *template.Template
	parts   []part // nil when the template needs text/template
	usesRef bool   // parts name .Alert.Ref
}

type part struct {
	text  string
	field int // 0 for a text part, else an index into simpleFields
	// with, when not nil, makes this part {{with .<field>}}...{{end}}: the
	// parts inside are written only when the field is not empty, and a
	// part with field dotField among them writes the field's value.
	with []part
}

// dotField marks {{.}} inside a {{with}} part.
const dotField = -1

// simpleFields are the fields the direct renderer handles, by the name a
// template uses. The renderer switches on the index rather than calling
// through a func value, which would make the data escape to the heap.
var simpleFields = []string{
	1: "Rule", 2: "Alert.ID", 3: "Alert.Source", 4: "Alert.Severity", 5: "Alert.Title",
	6: "Alert.Description", 7: "Alert.Category", 8: "Alert.DetectionSource", 9: "Alert.ThreatFamily",
	10: "Alert.Status", 11: "Alert.TenantID", 12: "Alert.URL", 13: "Alert.Skip",
	14: "Device.ID", 15: "Device.DNSName", 16: "Device.AADDeviceID", 17: "Alert.Ref",
}

func (p part) value(d *commentData) string {
	return fieldValue(p.field, p.text, d)
}

// size and write handle {{with}} parts; value is only for the others.
func (p part) size(d *commentData) int {
	v := p.value(d)
	if p.with == nil {
		return len(v)
	}
	if v == "" {
		return 0
	}
	n := 0
	for _, q := range p.with {
		if q.field == dotField {
			n += len(v)
		} else {
			n += len(q.value(d))
		}
	}
	return n
}

func (p part) write(sb *strings.Builder, d *commentData) {
	v := p.value(d)
	if p.with == nil {
		sb.WriteString(v)
		return
	}
	if v == "" {
		return
	}
	for _, q := range p.with {
		if q.field == dotField {
			sb.WriteString(v)
		} else {
			sb.WriteString(q.value(d))
		}
	}
}

func fieldValue(field int, text string, d *commentData) string {
	switch field {
	case 0:
		return text
	case 1:
		return d.Rule
	case 2:
		return d.Alert.ID
	case 3:
		return d.Alert.Source
	case 4:
		return string(d.Alert.Severity)
	case 5:
		return d.Alert.Title
	case 6:
		return d.Alert.Description
	case 7:
		return d.Alert.Category
	case 8:
		return d.Alert.DetectionSource
	case 9:
		return d.Alert.ThreatFamily
	case 10:
		return d.Alert.Status
	case 11:
		return d.Alert.TenantID
	case 12:
		return d.Alert.URL
	case 13:
		return d.Alert.Skip
	case 14:
		return d.Device.ID
	case 15:
		return d.Device.DNSName
	case 16:
		return d.Device.AADDeviceID
	case 17:
		return d.ref
	}
	return ""
}

func newCommentTmpl(t *template.Template) *commentTmpl {
	ct := &commentTmpl{t: t}
	if t.Tree == nil || t.Tree.Root == nil {
		ct.parts = []part{}
		return ct
	}
	if len(t.Templates()) > 1 {
		return ct // {{define}} blocks: leave to text/template
	}
	parts, ok := simpleParts(t.Tree.Root.Nodes, true)
	if !ok {
		return ct
	}
	ct.parts = parts
	ref := slices.Index(simpleFields, "Alert.Ref")
	for _, p := range parts {
		if p.field == ref {
			ct.usesRef = true
		}
	}
	if ct.parts == nil {
		ct.parts = []part{}
	}
	return ct
}

// simpleParts turns template nodes into parts when they are only text,
// plain field references and, at the top (top), {{with .Field}} blocks
// without else whose body is only text and {{.}}; ok is false otherwise.
func simpleParts(nodes []parse.Node, top bool) (parts []part, ok bool) {
	for _, n := range nodes {
		switch n := n.(type) {
		case *parse.TextNode:
			parts = append(parts, part{text: string(n.Text)})
		case *parse.ActionNode:
			if !top {
				// Inside {{with}}, . is the field's value: only {{.}}.
				if !isDot(n.Pipe) {
					return nil, false
				}
				parts = append(parts, part{field: dotField})
				continue
			}
			idx := simpleField(n.Pipe)
			if idx <= 0 {
				return nil, false
			}
			parts = append(parts, part{field: idx})
		case *parse.WithNode:
			idx := simpleField(n.Pipe)
			if !top || idx <= 0 || n.ElseList != nil || n.List == nil {
				return nil, false
			}
			inner, ok := simpleParts(n.List.Nodes, false)
			if !ok {
				return nil, false
			}
			if inner == nil {
				inner = []part{}
			}
			parts = append(parts, part{field: idx, with: inner})
		default:
			return nil, false
		}
	}
	return parts, true
}

// simpleField is the index in simpleFields of the one field a pipeline
// names, or 0.
func simpleField(p *parse.PipeNode) int {
	if p == nil || len(p.Decl) > 0 || len(p.Cmds) != 1 || len(p.Cmds[0].Args) != 1 {
		return 0
	}
	f, ok := p.Cmds[0].Args[0].(*parse.FieldNode)
	if !ok {
		return 0
	}
	return max(slices.Index(simpleFields, strings.Join(f.Ident, ".")), 0)
}

func isDot(p *parse.PipeNode) bool {
	if p == nil || len(p.Decl) > 0 || len(p.Cmds) != 1 || len(p.Cmds[0].Args) != 1 {
		return false
	}
	_, ok := p.Cmds[0].Args[0].(*parse.DotNode)
	return ok
}

// render executes the template and cleans the result. A template that
// fails on this alert (say, index out of range) yields ok=false.
func (ct *commentTmpl) render(d *commentData, maxRunes int) (string, error) {
	if ct.parts != nil {
		// Alerts stored before Ref existed have none: give them the same
		// default Decode gives today (computed once per render).
		d.ref = d.Alert.Ref
		if d.ref == "" && ct.usesRef {
			d.ref = alert.DefaultRef(d.Alert)
		}
		n := 0
		for _, p := range ct.parts {
			n += p.size(d)
		}
		var sb strings.Builder
		sb.Grow(n)
		for _, p := range ct.parts {
			p.write(&sb, d)
		}
		return sanitize(sb.String(), maxRunes), nil
	}
	// text/template needs the data behind an interface; copying it keeps
	// the caller's value on its stack in the direct case above.
	data := &commentData{Rule: d.Rule, Alert: d.Alert, Device: d.Device}
	var sb strings.Builder
	if err := ct.t.Execute(&limitWriter{w: &sb, n: 4 * maxRunes * utf8.UTFMax}, data); err != nil && !errors.Is(err, errCommentFull) {
		return "", err
	}
	return sanitize(sb.String(), maxRunes), nil
}

// errCommentFull stops a template once it has written more than a comment
// can hold, so that a loop over a huge alert list ends early; what was
// written is kept.
var errCommentFull = errors.New("comment is full")

// limitWriter keeps the first n bytes, then fails with errCommentFull.
type limitWriter struct {
	w io.Writer
	n int
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if len(p) > l.n {
		if l.n > 0 {
			_, _ = l.w.Write(p[:l.n])
			l.n = 0
		}
		return 0, errCommentFull
	}
	l.n -= len(p)
	return l.w.Write(p)
}

// isBidi reports the Unicode controls that reorder text on screen; in a
// comment they can make the console show something other than was sent.
func isBidi(r rune) bool {
	return (r >= 0x202A && r <= 0x202E) || (r >= 0x2066 && r <= 0x2069) || r == 0x200E || r == 0x200F || r == 0x061C
}

// sanitize turns whitespace controls into spaces, drops other control and
// bidi characters and invalid UTF-8, collapses runs of spaces (empty
// template fields leave them) and caps the result at maxRunes, marking a
// cut with "…".
func sanitize(s string, maxRunes int) string {
	clean := true
	prevSpace := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c == 0x7f || c >= 0x80 || (c == ' ' && prevSpace) {
			clean = false
			break
		}
		prevSpace = c == ' '
	}
	if clean && !prevSpace && len(s) <= maxRunes {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	n := 0
	pendingSpace := false
	for _, r := range s {
		switch {
		case r == utf8.RuneError || isBidi(r):
		case unicode.IsSpace(r):
			pendingSpace = n > 0
		case unicode.IsControl(r):
		default:
			if pendingSpace {
				b.WriteByte(' ')
				n++
				pendingSpace = false
			}
			b.WriteRune(r)
			n++
		}
	}
	out := b.String()
	if n <= maxRunes {
		return out
	}
	// A cut comment says so; the mark counts towards the cap.
	cut, i := 0, 0
	for i = range out {
		if cut == maxRunes-1 {
			break
		}
		cut++
	}
	return strings.TrimRight(out[:i], " ") + "…"
}

// sampleData is what templates run against at load: every slice has an
// element and every pointer is set, so a template only fails there when it
// names something that does not exist.
func sampleData() *commentData {
	return &commentData{
		Rule: "sample-rule",
		Alert: &alert.Alert{
			ID: "sample-id", Source: "generic", Severity: domain.SeverityHigh, Title: "sample title",
			Description: "sample description", Category: "Malware", DetectionSource: "sample",
			ThreatFamily: "sample", Status: "new", MitreTechniques: []string{"T1486"},
			Tags: []string{"sample"}, TenantID: "00000000-0000-0000-0000-000000000000",
			Time: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), URL: "https://example.invalid/alert", Ref: "sample alert sample-id",
			Devices: []alert.Device{{ID: strings.Repeat("0", 40), DNSName: "host.example.invalid"}},
			Dropped: []alert.DroppedDevice{{Value: "x", Reason: "sample"}},
		},
		Device: &alert.Device{ID: strings.Repeat("0", 40), DNSName: "host.example.invalid", AADDeviceID: "sample"},
	}
}

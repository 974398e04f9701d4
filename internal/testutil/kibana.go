package testutil

import (
	"bytes"
	"encoding/json"
	"regexp"
	"strings"
	"testing"
)

var mustacheTag = regexp.MustCompile(`\{\{\{\s*([\w.]+)\s*\}\}\}|\{\{\s*([\w.]+)\s*\}\}`)

// RenderKibana renders the small Mustache subset of the Elastic template
// that the docs publish, the way Kibana's webhook connector does: {{x}} is
// escaped for a JSON string, {{{x}}} is not escaped; an object renders as
// its JSON, an array as its items joined by commas (no brackets), keeping
// the key order of ctx. The docs tests of two packages render with it, so
// they cannot disagree about what Kibana sends.
func RenderKibana(tb testing.TB, tmpl string, ctx []byte) []byte {
	tb.Helper()
	lookup := func(path string) json.RawMessage {
		cur := json.RawMessage(ctx)
		for part := range strings.SplitSeq(path, ".") {
			var m map[string]json.RawMessage
			if err := json.Unmarshal(cur, &m); err != nil {
				tb.Fatalf("context: %s: %v", path, err)
			}
			cur = m[part]
		}
		return cur
	}
	compact := func(raw json.RawMessage) string {
		var b bytes.Buffer
		if err := json.Compact(&b, raw); err != nil {
			tb.Fatal(err)
		}
		return b.String()
	}
	text := func(raw json.RawMessage) string {
		raw = bytes.TrimSpace(raw)
		switch {
		case len(raw) == 0:
			return ""
		case raw[0] == '"':
			var s string
			if err := json.Unmarshal(raw, &s); err != nil {
				tb.Fatal(err)
			}
			return s
		case raw[0] == '[':
			var items []json.RawMessage
			if err := json.Unmarshal(raw, &items); err != nil {
				tb.Fatal(err)
			}
			parts := make([]string, len(items))
			for i, it := range items {
				parts[i] = compact(it)
			}
			return strings.Join(parts, ",")
		}
		return compact(raw)
	}
	out := mustacheTag.ReplaceAllStringFunc(tmpl, func(tag string) string {
		m := mustacheTag.FindStringSubmatch(tag)
		if m[1] != "" {
			return text(lookup(m[1]))
		}
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(text(lookup(m[2]))); err != nil {
			tb.Fatal(err)
		}
		s := strings.TrimSuffix(b.String(), "\n")
		return s[1 : len(s)-1]
	})
	return []byte(out)
}

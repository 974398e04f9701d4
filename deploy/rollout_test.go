package deploy_test

import (
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/scanhook/scanhook/internal/config"
)

// TestChecksumsRollPods: a config or secret change changes the pod template
// (so the Deployment rolls), a rules change does not (scanhook reloads the
// mounted rule file itself, and a restart would only lose that benefit).
func TestChecksumsRollPods(t *testing.T) {
	t.Parallel()
	const base = "secrets: {sentinel-token: 0123456789abcdef0123}\n" +
		"config: {sources: {sentinel: {auth: {bearer_token_file: /run/secrets/scanhook/sentinel-token}}}}\n"
	annotations := func(extra string) map[string]string {
		r := render(t, writeValues(t, base), writeValues(t, extra))
		return r.Deployment.Spec.Template.Annotations
	}
	before := annotations("{}")
	cases := []struct {
		name           string
		values         string
		config, secret bool // which checksum must change
	}{
		{"rules edited", "rules: {rules: [{name: all-quick, scan: Quick}]}", false, false},
		{"config edited", "config: {log: {level: debug}}", true, false},
		{"token rotated", "secrets: {sentinel-token: fedcba9876543210fedc}", false, true},
	}
	for _, c := range cases {
		after := annotations(c.values)
		if got := after["checksum/config"] != before["checksum/config"]; got != c.config {
			t.Errorf("%s: checksum/config changed = %v, want %v", c.name, got, c.config)
		}
		if got := after["checksum/secret"] != before["checksum/secret"]; got != c.secret {
			t.Errorf("%s: checksum/secret changed = %v, want %v", c.name, got, c.secret)
		}
	}
}

// TestSchemaFollowsConfig: values.schema.json describes the `config` value
// key for key as internal/config decodes it, so the schema can refuse an
// unknown key at `helm install` without refusing a real one. A field added
// to the config structs fails this test until the schema has it.
func TestSchemaFollowsConfig(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(chartDir, "values.schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	var schema schemaNode
	if err := json.Unmarshal(data, &schema); err != nil {
		t.Fatalf("values.schema.json: %v", err)
	}
	checkClosed(t, "values", &schema)
	cfg := schema.Properties["config"]
	if cfg == nil {
		t.Fatal("values.schema.json has no config")
	}
	compareSchema(t, "config", cfg, reflect.TypeFor[config.Config]())
}

type schemaNode struct {
	Type                 any                    `json:"type"`
	Properties           map[string]*schemaNode `json:"properties"`
	AdditionalProperties json.RawMessage        `json:"additionalProperties"`
	Items                *schemaNode            `json:"items"`
}

// checkClosed: every object with properties refuses other keys.
func checkClosed(t *testing.T, path string, n *schemaNode) {
	t.Helper()
	if n == nil {
		return
	}
	if len(n.Properties) > 0 && string(n.AdditionalProperties) != "false" {
		t.Errorf("schema %s: additionalProperties must be false", path)
	}
	for k, p := range n.Properties {
		checkClosed(t, path+"."+k, p)
	}
	checkClosed(t, path+"[]", n.Items)
}

var durationType = reflect.TypeFor[time.Duration]()

func compareSchema(t *testing.T, path string, n *schemaNode, typ reflect.Type) {
	t.Helper()
	for typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	switch {
	case typ == durationType:
		return
	case typ.Kind() == reflect.Struct:
		want := yamlKeys(typ)
		got, wantKeys := slices.Sorted(maps.Keys(n.Properties)), slices.Sorted(maps.Keys(want))
		if !slices.Equal(got, wantKeys) {
			t.Errorf("schema %s has keys %v, internal/config decodes %v", path, got, wantKeys)
		}
		for k, ft := range want {
			if p := n.Properties[k]; p != nil {
				compareSchema(t, path+"."+k, p, ft)
			}
		}
	case typ.Kind() == reflect.Map && path == "config.sources":
		// Each source lists the keys it takes (labels only for alertmanager,
		// mapping only for generic); together they are Source's.
		src := typ.Elem()
		fields := yamlKeys(src)
		union := map[string]bool{}
		for name, p := range n.Properties {
			for k := range p.Properties {
				ft, ok := fields[k]
				if !ok {
					t.Errorf("schema config.sources.%s.%s: not a Source field", name, k)
					continue
				}
				union[k] = true
				compareSchema(t, "config.sources."+name+"."+k, p.Properties[k], ft)
			}
		}
		for k := range fields {
			if !union[k] {
				t.Errorf("schema config.sources: no source takes %s", k)
			}
		}
	case typ.Kind() == reflect.Slice && n.Items != nil:
		compareSchema(t, path+"[]", n.Items, typ.Elem())
	}
}

// yamlKeys maps a struct's YAML keys to their types.
func yamlKeys(typ reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for f := range typ.Fields() {
		tag := strings.Split(f.Tag.Get("yaml"), ",")[0]
		if tag == "-" || !f.IsExported() {
			continue
		}
		if tag == "" {
			tag = strings.ToLower(f.Name)
		}
		out[tag] = f.Type
	}
	return out
}

package alert

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/scanhook/scanhook/internal/domain"
)

// TestDocYAMLExamples reads the configuration examples of docs/sources.md
// (the YAML blocks that start with "sources:") into the option types with unknown keys refused, so that the documented
// keys and the yaml tags cannot drift apart.
func TestDocYAMLExamples(t *testing.T) {
	doc := string(readFile(t, filepath.Join("..", "..", "docs", "sources.md")))
	var blocks []string
	for rest := doc; ; {
		_, after, ok := strings.Cut(rest, "```yaml\n")
		if !ok {
			break
		}
		block, tail, _ := strings.Cut(after, "```")
		// The page's other YAML blocks are sender configurations
		// (Kibana, Alertmanager, the chart's values), checked in deploy/.
		if strings.HasPrefix(block, "sources:\n") {
			blocks = append(blocks, block)
		}
		rest = tail
	}
	if len(blocks) != 2 {
		t.Fatalf("found %d yaml blocks in docs/sources.md, want 2 starting with \"sources:\" (alertmanager labels, generic mapping)", len(blocks))
	}
	var cfg struct {
		Sources struct {
			Alertmanager struct {
				DeviceFields []string            `yaml:"device_fields"`
				Labels       AlertmanagerOptions `yaml:"labels"`
			} `yaml:"alertmanager"`
			Generic struct {
				Mapping GenericMapping `yaml:"mapping"`
			} `yaml:"generic"`
		} `yaml:"sources"`
	}
	for _, b := range blocks {
		dec := yaml.NewDecoder(bytes.NewReader([]byte(b)))
		dec.KnownFields(true)
		if err := dec.Decode(&cfg); err != nil {
			t.Fatalf("docs/sources.md yaml example: %v\n%s", err, b)
		}
	}
	am := cfg.Sources.Alertmanager.Labels
	if len(am.DNSNameLabels) > 0 {
		t.Errorf("the example sets labels.dns_name_labels beside device_fields, which the config refuses")
	}
	am.DNSNameLabels = cfg.Sources.Alertmanager.DeviceFields
	if err := am.Validate(); err != nil {
		t.Error(err)
	}
	if d := (AlertmanagerOptions{}).withDefaults(); !equalOpts(am, d) {
		t.Errorf("the documented labels %+v are not the defaults %+v", am, d)
	}
	m := cfg.Sources.Generic.Mapping
	if err := m.Validate(); err != nil {
		t.Error(err)
	}
	if m.ID != "detection_id" || m.SeverityMap["sev-a"] != domain.SeverityCritical || m.Devices == nil || m.Devices.DNSName != "fqdn" || m.SkipWhen == nil || len(m.SkipWhen.Values) != 2 {
		t.Errorf("generic mapping example read as %+v", m)
	}
}

func equalOpts(a, b AlertmanagerOptions) bool {
	return strings.Join(a.DeviceIDLabels, ",") == strings.Join(b.DeviceIDLabels, ",") &&
		strings.Join(a.DNSNameLabels, ",") == strings.Join(b.DNSNameLabels, ",") && a.SeverityLabel == b.SeverityLabel
}

package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

const full = `listen: "127.0.0.1:9090"
rules: rules.yaml
store:
  driver: sqlite
  dsn: data/scanhook.db
defender:
  cloud: gcc-high
  credential: client-secret
  tenant_id: 00000000-0000-0000-0000-000000000001
  client_id: 00000000-0000-0000-0000-000000000002
  client_secret_file: secret.txt
  rate_limit: {per_minute: 50}
  dry_run: true
sources:
  sentinel:
    auth:
      bearer_token_file: /run/secrets/sentinel-token
  splunk:
    auth:
      query_token_file: splunk-token
  alertmanager:
    insecure_no_auth: true
server:
  max_body_bytes: 2048
  timer_slack: 500us
dispatch:
  max_age: 2d
`

func TestParseValid(t *testing.T) {
	cfg, err := Parse("/etc/sh/config.yaml", []byte(full))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"listen", cfg.Listen, "127.0.0.1:9090"},
		{"rules relative to the config's folder", cfg.Rules, "/etc/sh/rules.yaml"},
		{"sqlite dsn relative", cfg.Store.DSN, "/etc/sh/data/scanhook.db"},
		{"secret file relative", cfg.Defender.ClientSecretFile, "/etc/sh/secret.txt"},
		{"absolute path kept", cfg.Sources["sentinel"].Auth.BearerTokenFile, "/run/secrets/sentinel-token"},
		{"query token relative", cfg.Sources["splunk"].Auth.QueryTokenFile, "/etc/sh/splunk-token"},
		{"per_minute set", cfg.Defender.RateLimit.PerMinute, 50},
		{"per_hour keeps its default", cfg.Defender.RateLimit.PerHour, 1500},
		{"dry_run", cfg.Defender.DryRun, true},
		{"insecure_no_auth", cfg.Sources["alertmanager"].InsecureNoAuth, true},
		{"max body", cfg.Server.MaxBodyBytes, int64(2048)},
		{"day durations", cfg.Dispatch.MaxAge, 48 * time.Hour},
		{"defaults kept", cfg.Dispatch.Workers, 4},
		{"read header timeout default", cfg.Server.ReadHeaderTimeout, 5 * time.Second},
		{"deprecated timer slack warned about", strings.Join(cfg.Warnings, "\n"),
			"/etc/sh/config.yaml:25:3: server.timer_slack is deprecated and has no effect; remove it"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: got %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestStoreDefaults(t *testing.T) {
	tests := []struct {
		name, in    string
		driver, dsn string
		dsnFile     string
	}{
		{"empty file: SQLite at the default path", "", "sqlite", DefaultSQLiteDSN, ""},
		{"postgres with dsn_file inherits no SQLite path", "store: {driver: postgres, dsn_file: /run/secrets/dsn}\n", "postgres", "", "/run/secrets/dsn"},
		{"postgres from the environment", "store: {driver: postgres}\n", "postgres", "", ""},
		{"sqlite elsewhere", "store: {dsn: /data/s.db}\n", "sqlite", "/data/s.db", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse("/etc/c.yaml", []byte(tt.in))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if cfg.Store.Driver != tt.driver || cfg.Store.DSN != tt.dsn || cfg.Store.DSNFile != tt.dsnFile {
				t.Fatalf("store %+v, want driver %q dsn %q dsn_file %q", cfg.Store, tt.driver, tt.dsn, tt.dsnFile)
			}
		})
	}
}

func TestParseEmptyFileGivesDefaults(t *testing.T) {
	cfg, err := Parse("c.yaml", []byte(""))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if cfg.Store.Driver != "sqlite" || cfg.Listen != ":8080" {
		t.Fatalf("defaults not applied: %+v", cfg)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string // each must appear, in order, one per line
	}{
		{
			name: "unknown top-level key",
			in:   "listen: \":1\"\nlisen: x\n",
			want: []string{`c.yaml:2:1: `, `lisen`},
		},
		{
			name: "bad driver points at the value",
			in:   "store:\n  driver: mysql\n",
			want: []string{`c.yaml:2:11: store.driver: "mysql" is not supported`},
		},
		{
			name: "unknown source points at the key and suggests",
			in:   "sources:\n  sentinal:\n    insecure_no_auth: true\n",
			want: []string{`c.yaml:2:3: sources: unknown source "sentinal"`, `did you mean "sentinel"?`},
		},
		{
			name: "unknown nested key",
			in:   "sources:\n  sentinel:\n    auth:\n      bearer_token: abc\n",
			want: []string{`c.yaml:4:7: `, `bearer_token`},
		},
		{
			name: "wrong type",
			in:   "server:\n  max_body_bytes: lots\n",
			want: []string{`c.yaml:2:19: `},
		},
		{
			name: "intake bounds point at their values",
			in:   "server:\n  max_unverified_in_flight: 0\n  unverified_read_timeout: 0s\n  max_devices_per_delivery: -1\n",
			want: []string{
				`c.yaml:2:29: server.max_unverified_in_flight: must be at least 1`,
				`c.yaml:3:28: server.unverified_read_timeout: must be positive`,
				`c.yaml:4:29: server.max_devices_per_delivery: must be at least 1`,
			},
		},
		{
			name: "unverified read timeout within read timeout",
			in:   "server:\n  read_timeout: 2s\n  unverified_read_timeout: 3s\n",
			want: []string{`c.yaml:3:28: server.unverified_read_timeout: must not exceed server.read_timeout (2s)`},
		},
		{
			name: "every problem reported",
			in:   "store:\n  driver: mysql\nlog:\n  level: loud\n",
			want: []string{`c.yaml:2:11: store.driver`, `c.yaml:4:10: log.level: "loud"`},
		},
		{
			name: "contradictory auth",
			in:   "sources:\n  elastic:\n    insecure_no_auth: true\n    auth: {bearer_token_file: /x}\n",
			want: []string{`c.yaml:3:23: sources.elastic: insecure_no_auth with auth configured`},
		},
		{
			name: "generic needs a mapping",
			in:   "sources:\n  generic:\n    insecure_no_auth: true\n",
			want: []string{`c.yaml:3:5: sources.generic: a mapping is required`},
		},
		{
			name: "mapping only on generic",
			in:   "sources:\n  splunk:\n    insecure_no_auth: true\n    mapping: {}\n",
			want: []string{`sources.splunk.mapping: only the generic source takes a mapping`},
		},
		{
			name: "device_fields only where configurable",
			in:   "sources:\n  elastic:\n    insecure_no_auth: true\n    device_fields: [host.name]\n",
			want: []string{`c.yaml:4:20: sources.elastic.device_fields: only alertmanager and splunk take device_fields`},
		},
		{
			name: "device_fields names",
			in:   "sources:\n  splunk:\n    insecure_no_auth: true\n    device_fields: [dest, \"\", \"a b\"]\n",
			want: []string{`c.yaml:4:20: sources.splunk.device_fields: "" is not a field name`, `"a b" is not a field name`},
		},
		{
			name: "alertmanager device_fields are label names",
			in:   "sources:\n  alertmanager:\n    insecure_no_auth: true\n    device_fields: [host-name]\n",
			want: []string{`sources.alertmanager.device_fields: "host-name" is not a Prometheus label name`},
		},
		{
			name: "alertmanager device_fields or dns_name_labels",
			in:   "sources:\n  alertmanager:\n    insecure_no_auth: true\n    labels: {dns_name_labels: [host]}\n    device_fields: [hostname]\n",
			want: []string{`c.yaml:5:20: sources.alertmanager: device_fields and labels.dns_name_labels are the same list`},
		},
		{
			name: "yaml syntax",
			in:   "listen: [\n",
			want: []string{`c.yaml:`},
		},
		{
			name: "bad cloud",
			in:   "defender:\n  cloud: mars\n",
			want: []string{`c.yaml:2:3: `, `mars`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("c.yaml", []byte(tt.in))
			if err == nil {
				t.Fatal("Parse accepted a bad config")
			}
			msg := err.Error()
			rest := msg
			for _, w := range tt.want {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("error %q lacks %q", msg, w)
				}
				rest = rest[i+len(w):]
			}
		})
	}
}

func TestSecrets(t *testing.T) {
	files := map[string]string{
		"/s/bearer": "0123456789abcdef-bearer\n",
		"/s/short":  "short\n",
	}
	readFile := func(name string) ([]byte, error) {
		if v, ok := files[name]; ok {
			return []byte(v), nil
		}
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	env := map[string]string{"SCANHOOK_SPLUNK_QUERY_TOKEN": "query-token-from-environment"}
	getenv := func(k string) string { return env[k] }

	cfg := &Config{Sources: map[string]Source{
		"sentinel":     {Auth: Auth{BearerTokenFile: "/s/bearer"}},
		"splunk":       {},
		"alertmanager": {InsecureNoAuth: true},
	}}
	got, err := cfg.Secrets(getenv, readFile)
	if err != nil {
		t.Fatalf("Secrets: %v", err)
	}
	if string(got["sentinel"].Bearer) != "0123456789abcdef-bearer" {
		t.Errorf("bearer from file: got %q (trailing newline must go)", got["sentinel"].Bearer)
	}
	if string(got["splunk"].Query) != "query-token-from-environment" {
		t.Errorf("query token from env: got %q", got["splunk"].Query)
	}
	if !got["alertmanager"].NoAuth {
		t.Error("insecure_no_auth lost")
	}

	bad := &Config{Sources: map[string]Source{
		"sentinel": {Auth: Auth{BearerTokenFile: "/s/short"}},
		"elastic":  {},
		"graph":    {Auth: Auth{HMACSecretFile: "/s/missing"}},
	}}
	_, err = bad.Secrets(getenv, readFile)
	if err == nil {
		t.Fatal("Secrets accepted a short token, a missing file and a source without auth")
	}
	for _, w := range []string{
		"sources.elastic: no credential configured",
		"sources.graph.auth.hmac_secret_file: read /s/missing: file does not exist",
		"sources.sentinel.auth.bearer_token_file: secret is shorter than 16 characters",
	} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q lacks %q", err, w)
		}
	}
	if strings.Contains(err.Error(), "short\n") || strings.Contains(err.Error(), "query-token") {
		t.Errorf("error leaks a secret: %q", err)
	}
}

func TestStoreDSN(t *testing.T) {
	readFile := func(name string) ([]byte, error) {
		if name == "/s/dsn" {
			return []byte("postgres://u:p@db/scanhook\n"), nil
		}
		return nil, errors.New("no such file")
	}
	tests := []struct {
		name string
		st   Store
		env  string
		want string
		err  bool
	}{
		{"dsn", Store{Driver: "postgres", DSN: "postgres://db/x"}, "", "postgres://db/x", false},
		{"dsn_file wins and is trimmed", Store{Driver: "postgres", DSNFile: "/s/dsn"}, "postgres://env", "postgres://u:p@db/scanhook", false},
		{"environment", Store{Driver: "postgres"}, "postgres://env", "postgres://env", false},
		{"none", Store{Driver: "postgres"}, "", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &Config{Store: tt.st}
			got, err := c.StoreDSN(func(string) string { return tt.env }, readFile)
			if (err != nil) != tt.err || got != tt.want {
				t.Fatalf("got %q, %v; want %q, error %v", got, err, tt.want, tt.err)
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if err == nil || !strings.Contains(err.Error(), "read config") {
		t.Fatalf("got %v", err)
	}
}

// deprecatedTuningKeys are accepted and ignored; the doc leaves them out.
var deprecatedTuningKeys = map[string]bool{"server.timer_slack": true}

// TestDocTuningDefaults keeps the tuning-defaults block of
// docs/configuration.md true: parsed, it must equal Defaults(), and it must
// name every server, dispatch and log key (a key left out would otherwise
// pass, since parsing starts from the defaults).
func TestDocTuningDefaults(t *testing.T) {
	const file = "../../docs/configuration.md"
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "<!-- tuning-defaults:begin -->")
	block, _, ok2 := strings.Cut(rest, "<!-- tuning-defaults:end -->")
	if !ok || !ok2 {
		t.Fatalf("%s: tuning-defaults markers not found", file)
	}
	block = strings.TrimSpace(block)
	block = strings.TrimSuffix(strings.TrimPrefix(block, "```yaml"), "```")
	cfg, err := Parse(file, []byte(block))
	if err != nil {
		t.Fatalf("the documented tuning block does not parse: %v", err)
	}
	d := Defaults()
	if cfg.Server != d.Server {
		t.Errorf("documented server defaults %+v, code %+v", cfg.Server, d.Server)
	}
	if cfg.Dispatch != d.Dispatch {
		t.Errorf("documented dispatch defaults %+v, code %+v", cfg.Dispatch, d.Dispatch)
	}
	if cfg.Log != d.Log {
		t.Errorf("documented log defaults %+v, code %+v", cfg.Log, d.Log)
	}
	var doc map[string]map[string]any
	if err := yaml.Unmarshal([]byte(block), &doc); err != nil {
		t.Fatal(err)
	}
	for section, v := range map[string]any{"server": d.Server, "dispatch": d.Dispatch, "log": d.Log} {
		typ := reflect.TypeOf(v)
		for i := range typ.NumField() {
			key, _, _ := strings.Cut(typ.Field(i).Tag.Get("yaml"), ",")
			if key == "" || key == "-" || deprecatedTuningKeys[section+"."+key] {
				continue
			}
			if _, ok := doc[section][key]; !ok {
				t.Errorf("%s: %s.%s is not in the tuning-defaults block", file, section, key)
			}
		}
	}
}

// TestSharedSecretRefused checks that two sources may not hold the same
// secret (a body signed for alertmanager would pass on elastic's route):
// the error points at the second source's key and names both sources.
func TestSharedSecretRefused(t *testing.T) {
	files := map[string]string{
		"/s/am-hmac":      "shared-hmac-secret-0123456789\n",
		"/s/elastic-hmac": "shared-hmac-secret-0123456789",
		"/s/own":          "a-token-of-its-own-0123456789",
	}
	readFile := func(name string) ([]byte, error) {
		if v, ok := files[name]; ok {
			return []byte(v), nil
		}
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	env := map[string]string{"SCANHOOK_SPLUNK_QUERY_TOKEN": "a-token-of-its-own-0123456789"}
	getenv := func(k string) string { return env[k] }
	cfg, err := Parse("/etc/sh/config.yaml", []byte(`sources:
  alertmanager:
    auth:
      hmac_secret_file: /s/am-hmac
  elastic:
    auth:
      hmac_secret_file: /s/elastic-hmac
  sentinel:
    auth:
      bearer_token_file: /s/own
      query_token_file: /s/own
  splunk: {}
`))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	_, err = cfg.Secrets(getenv, readFile)
	if err == nil {
		t.Fatal("Secrets accepted two sources sharing a secret")
	}
	for _, w := range []string{
		"/etc/sh/config.yaml:7:7: sources.elastic.auth.hmac_secret_file holds the same secret as sources.alertmanager.auth.hmac_secret_file: a signature or token for source alertmanager would pass as elastic",
		"/etc/sh/config.yaml:12:3: sources.splunk (SCANHOOK_SPLUNK_QUERY_TOKEN) holds the same secret as sources.sentinel.auth.bearer_token_file",
	} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q lacks %q", err, w)
		}
	}
	if strings.Count(err.Error(), "holds the same secret") != 2 {
		t.Errorf("want two errors (sentinel may use one token two ways), got %q", err)
	}
	if strings.Contains(err.Error(), "shared-hmac") || strings.Contains(err.Error(), "of-its-own") {
		t.Errorf("error leaks a secret: %q", err)
	}

	// Each its own: accepted.
	files["/s/elastic-hmac"] = "another-hmac-secret-0123456789"
	env["SCANHOOK_SPLUNK_QUERY_TOKEN"] = "splunk-query-token-0123456789"
	if _, err := cfg.Secrets(getenv, readFile); err != nil {
		t.Errorf("distinct secrets refused: %v", err)
	}
}

// TestInsecureNoAuthPublic checks that insecure_no_auth on a listen
// address others can reach is refused unless insecure_no_auth_public says
// so too, and that loopback addresses need no such key.
func TestInsecureNoAuthPublic(t *testing.T) {
	const src = "sources:\n  alertmanager:\n    insecure_no_auth: true\n"
	for _, listen := range []string{":8080", "0.0.0.0:8080", "[::]:8080", "10.1.2.3:8080", "scanhook.example:8080"} {
		_, err := Parse("c.yaml", []byte("listen: \""+listen+"\"\n"+src))
		want := `c.yaml:4:5: sources.alertmanager: insecure_no_auth on listen "` + listen + `", which is not a loopback address`
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "insecure_no_auth_public: true") {
			t.Errorf("listen %s: error %v, want %q", listen, err, want)
		}
		cfg, err := Parse("c.yaml", []byte("listen: \""+listen+"\"\ninsecure_no_auth_public: true\n"+src))
		if err != nil || !cfg.InsecureNoAuthPublic {
			t.Errorf("listen %s with insecure_no_auth_public: %v", listen, err)
		}
	}
	for _, listen := range []string{"127.0.0.1:8080", "127.0.0.1:0", "[::1]:8080", "localhost:8080"} {
		if _, err := Parse("c.yaml", []byte("listen: \""+listen+"\"\n"+src)); err != nil {
			t.Errorf("listen %s: %v", listen, err)
		}
	}
	// The default listen (":8080") is public.
	if _, err := Parse("c.yaml", []byte(src)); err == nil {
		t.Error("insecure_no_auth on the default listen accepted")
	}
}

// TestUnsafeSecretWarnings checks the start-up warnings for a world-writable
// secret file and a password written in store.dsn.
func TestUnsafeSecretWarnings(t *testing.T) {
	dir := t.TempDir()
	for name, mode := range map[string]os.FileMode{"open-token": 0o666, "good-token": 0o600} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("0123456789abcdef0123"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // past the umask
			t.Fatal(err)
		}
	}
	cfgPath := filepath.Join(dir, "config.yaml")
	cfg, err := Parse(cfgPath, []byte(`listen: 127.0.0.1:8080
store:
  driver: postgres
  dsn: postgres://scanhook:hunter2@db.example/scanhook
sources:
  sentinel:
    auth:
      bearer_token_file: open-token
  elastic:
    auth:
      bearer_token_file: good-token
`))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	got := strings.Join(cfg.Warnings, "\n")
	for _, w := range []string{
		cfgPath + ":4:3: store.dsn holds a password inline; move the DSN to store.dsn_file (mode 0600) or SCANHOOK_STORE_DSN",
		cfgPath + ":8:7: sources.sentinel.auth.bearer_token_file: " + filepath.Join(dir, "open-token") + " is world-writable (mode 0666)",
	} {
		if !strings.Contains(got, w) {
			t.Errorf("warnings %q lack %q", got, w)
		}
	}
	if len(cfg.Warnings) != 2 || strings.Contains(got, "hunter2") || strings.Contains(got, "good-token") {
		t.Errorf("want exactly the two warnings, without the password: %q", got)
	}

	for dsn, want := range map[string]bool{
		"host=db user=scanhook password=x dbname=s": true,
		"host=db password = x":                      true,
		"postgres://scanhook@db.example/s":          false,
		"host=db user=scanhook dbname=s":            false,
		"/var/lib/scanhook/scanhook.db":             false,
	} {
		if got := dsnHasPassword(dsn); got != want {
			t.Errorf("dsnHasPassword(%q) = %v, want %v", dsn, got, want)
		}
	}
}

func TestDeviceFieldsReachTheDecoders(t *testing.T) {
	cfg, err := Parse("c.yaml", []byte(`listen: "127.0.0.1:8080"
sources:
  alertmanager:
    insecure_no_auth: true
    labels: {device_id_labels: [mid], severity_label: sev}
    device_fields: [hostname, instance]
  splunk:
    insecure_no_auth: true
    device_fields: [dest_nt_host, dest]
`))
	if err != nil {
		t.Fatal(err)
	}
	o := cfg.AlertOptions()
	am := o.Alertmanager
	if !reflect.DeepEqual(am.DNSNameLabels, []string{"hostname", "instance"}) || !reflect.DeepEqual(am.DeviceIDLabels, []string{"mid"}) || am.SeverityLabel != "sev" {
		t.Errorf("alertmanager options %+v", am)
	}
	if !reflect.DeepEqual(o.Splunk.DeviceFields, []string{"dest_nt_host", "dest"}) {
		t.Errorf("splunk options %+v", o.Splunk)
	}
	// labels.dns_name_labels alone keeps working.
	cfg, err = Parse("c.yaml", []byte("listen: \"127.0.0.1:8080\"\nsources:\n  alertmanager:\n    insecure_no_auth: true\n    labels: {dns_name_labels: [host]}\n    device_fields: []\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.AlertOptions().Alertmanager.DNSNameLabels; !reflect.DeepEqual(got, []string{"host"}) {
		t.Errorf("dns_name_labels: %v", got)
	}
}

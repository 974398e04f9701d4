// Package config owns scanhook's configuration file: its schema (the
// contract of docs/configuration.md), strict loading with FILE:LINE:COL errors, defaults,
// and reading the secrets it points at (files or environment, never inline).
package config

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/scanhook/scanhook/internal/alert"
	"github.com/scanhook/scanhook/internal/defender"
	"github.com/scanhook/scanhook/internal/domain"
	"github.com/scanhook/scanhook/internal/yamlpos"
)

// Config is the whole configuration file.
type Config struct {
	Listen   string            `yaml:"listen"`
	Rules    string            `yaml:"rules"`
	Store    Store             `yaml:"store"`
	Defender defender.Config   `yaml:"defender"`
	Sources  map[string]Source `yaml:"sources"`
	Server   Server            `yaml:"server"`
	Dispatch Dispatch          `yaml:"dispatch"`
	Log      Log               `yaml:"log"`
	// InsecureNoAuthPublic allows a source with insecure_no_auth while
	// listen is not a loopback address: anyone who reaches the port can
	// then send that source's alerts.
	InsecureNoAuthPublic bool `yaml:"insecure_no_auth_public"`

	// File is the path the configuration was read from ("" when built in code).
	File string `yaml:"-"`
	// Warnings are FILE:LINE:COL notes about keys that load but should
	// change (deprecated ones); the service logs them at start.
	Warnings []string `yaml:"-"`

	// root is the parsed file, for the positions of errors found after
	// Parse (Secrets); nil when built in code.
	root *yaml.Node
}

// Store selects the database.
type Store struct {
	Driver string `yaml:"driver"` // sqlite | postgres
	// DSN is the SQLite file, or a PostgreSQL URL without a password; a DSN
	// with a password belongs in DSNFile or SCANHOOK_STORE_DSN.
	DSN     string `yaml:"dsn"`
	DSNFile string `yaml:"dsn_file"`
}

// Source configures one webhook source.
type Source struct {
	Auth           Auth `yaml:"auth"`
	InsecureNoAuth bool `yaml:"insecure_no_auth"`
	// Mapping is the generic source's JSON-path mapping.
	Mapping *alert.GenericMapping `yaml:"mapping"`
	// Labels names the Alertmanager labels that carry device and severity.
	Labels *alert.AlertmanagerOptions `yaml:"labels"`
	// DeviceFields are the fields (Alertmanager: labels) that name the
	// device, tried in order; the first usable host name wins. Empty means
	// the source's default list. For alertmanager it is the same list as
	// labels.dns_name_labels, which it replaces: set one, not both.
	DeviceFields []string `yaml:"device_fields"`
}

// deviceFieldSources take device_fields.
var deviceFieldSources = []string{domain.SourceAlertmanager, domain.SourceSplunk}

// Auth names where a source's credentials are. Each may instead come from
// the environment: SCANHOOK_<SOURCE>_BEARER_TOKEN, _HMAC_SECRET, _QUERY_TOKEN.
// Entra accepts Entra ID access tokens (no secret at all); any one of the
// configured methods passing authenticates a request.
type Auth struct {
	BearerTokenFile string `yaml:"bearer_token_file"`
	HMACSecretFile  string `yaml:"hmac_secret_file"`
	QueryTokenFile  string `yaml:"query_token_file"`
	Entra           *Entra `yaml:"entra"`
}

// Entra is what an Entra ID access token must show to authenticate a
// source (docs/entra-id.md). The metadata and keys come from the
// defender.authority_host (or defender.cloud's authority).
type Entra struct {
	// TenantIDs allow-lists the token's tid (GUIDs).
	TenantIDs []string `yaml:"tenant_ids"`
	// Audiences are scanhook's app ID URI and/or client id; aud must be one.
	Audiences []string `yaml:"audiences"`
	// AllowedClientIDs are the calling apps' appid (v1) / azp (v2).
	AllowedClientIDs []string `yaml:"allowed_client_ids"`
	// AllowedObjectIDs are callers' oid (a managed identity's object id).
	AllowedObjectIDs []string `yaml:"allowed_object_ids"`
	// RequiredRoles must all be in the token's roles (e.g. Alerts.Submit).
	RequiredRoles []string `yaml:"required_roles"`
}

// Server tunes the HTTP listener.
type Server struct {
	MaxBodyBytes      int64         `yaml:"max_body_bytes"`
	ReadHeaderTimeout time.Duration `yaml:"read_header_timeout"`
	ReadTimeout       time.Duration `yaml:"read_timeout"`
	WriteTimeout      time.Duration `yaml:"write_timeout"`
	IdleTimeout       time.Duration `yaml:"idle_timeout"`
	ShutdownTimeout   time.Duration `yaml:"shutdown_timeout"`
	// IngestPerSecond and IngestBurst bound webhook intake (429 beyond);
	// 0 per second disables the limiter.
	IngestPerSecond float64 `yaml:"ingest_per_second"`
	IngestBurst     int     `yaml:"ingest_burst"`
	// MaxInFlight bounds webhook deliveries handled at once (429 beyond),
	// which bounds memory when senders outrun the store.
	MaxInFlight int `yaml:"max_in_flight"`
	// MaxUnverifiedInFlight bounds the request bodies read at once only to
	// check their signature (429 beyond). Requests with a valid bearer,
	// query or Entra ID token never use it, so unsigned or slow bodies
	// cannot take the slots of authenticated senders.
	MaxUnverifiedInFlight int `yaml:"max_unverified_in_flight"`
	// UnverifiedReadTimeout is how long a body read to check its signature
	// may take; a slower sender is cut off.
	UnverifiedReadTimeout time.Duration `yaml:"unverified_read_timeout"`
	// MaxDevicesPerDelivery bounds the devices decided on for one delivery,
	// counted across its alerts in order; the rest are recorded as dropped.
	MaxDevicesPerDelivery int `yaml:"max_devices_per_delivery"`
	// TimerSlack is deprecated and ignored: it is still accepted so that
	// existing files load, and a value in it is warned about at start.
	TimerSlack time.Duration `yaml:"timer_slack"`
}

// Dispatch tunes how jobs reach Defender.
type Dispatch struct {
	Workers      int           `yaml:"workers"`
	MaxAttempts  int           `yaml:"max_attempts"`
	MaxAge       time.Duration `yaml:"max_age"`
	BackoffBase  time.Duration `yaml:"backoff_base"`
	BackoffMax   time.Duration `yaml:"backoff_max"`
	Lease        time.Duration `yaml:"lease"`
	PollInterval time.Duration `yaml:"poll_interval"`
}

// Log sets the log level: debug, info, warn or error.
type Log struct {
	Level string `yaml:"level"`
}

// DefaultSQLiteDSN is the SQLite file when store.dsn is not set.
const DefaultSQLiteDSN = "/var/lib/scanhook/scanhook.db"

// Defaults returns the configuration used for every key a file leaves out.
func Defaults() Config {
	return Config{
		Listen: ":8080",
		Rules:  "/etc/scanhook/rules.yaml",
		// The SQLite file's default is applied after decoding (see
		// DefaultSQLiteDSN): a PostgreSQL config must not inherit it.
		Store: Store{Driver: "sqlite"},
		Defender: defender.Config{
			Cloud:      defender.CloudCommercial,
			Credential: defender.CredentialDefault,
			RateLimit:  defender.RateLimit{PerMinute: defender.DefaultPerMinute, PerHour: defender.DefaultPerHour},
		},
		Server: Server{
			MaxBodyBytes:      1 << 20,
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       30 * time.Second,
			WriteTimeout:      30 * time.Second,
			IdleTimeout:       2 * time.Minute,
			ShutdownTimeout:   20 * time.Second,
			// Above the 2,000 alerts/s the store sustains, so the limiter
			// only cuts in for floods that would otherwise queue in memory.
			IngestPerSecond: 5000,
			IngestBurst:     5000,
			MaxInFlight:     256,
			// Signed bodies read before their signature is checked.
			MaxUnverifiedInFlight: 32,
			UnverifiedReadTimeout: 5 * time.Second,
			MaxDevicesPerDelivery: 500,
		},
		Dispatch: Dispatch{
			Workers:     4,
			MaxAttempts: 12,
			MaxAge:      24 * time.Hour,
			BackoffBase: 2 * time.Second,
			BackoffMax:  10 * time.Minute,
			// A dead replica's claimed jobs resume after this; an attempt
			// must end within half of it.
			Lease:        30 * time.Second,
			PollInterval: 15 * time.Second,
		},
		Log: Log{Level: "info"},
	}
}

// Load reads and validates a configuration file. Relative paths in it are
// relative to the file's folder, as in Prometheus, so a config and its rules
// can move together. The error is a yamlpos.ErrorList of every problem.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, data)
}

// Parse is Load on bytes already read; path names the file in errors and
// anchors relative paths.
func Parse(path string, data []byte) (*Config, error) {
	cfg := Defaults()
	var root *yaml.Node
	// An empty file means "all defaults", which the demo and tests rely on.
	if len(bytes.TrimSpace(data)) > 0 {
		var errs yamlpos.ErrorList
		if root, errs = yamlpos.Parse(path, data); len(errs) > 0 {
			return nil, errs.Err()
		}
		if errs := yamlpos.Decode(path, root, &cfg); len(errs) > 0 {
			return nil, errs.Err()
		}
	}
	cfg.File = path
	cfg.root = root
	if cfg.Store.Driver == "sqlite" && cfg.Store.DSN == "" && cfg.Store.DSNFile == "" {
		cfg.Store.DSN = DefaultSQLiteDSN
	}
	v := validator{file: path, root: root}
	v.check(&cfg)
	if err := v.errs.Err(); err != nil {
		return nil, err
	}
	cfg.resolvePaths(filepath.Dir(path))
	v.checkSecretFiles(&cfg)
	cfg.Warnings = v.warns
	return &cfg, nil
}

// checkSecretFiles warns about secrets others on the host could replace
// (a world-writable file) and about a password written in store.dsn,
// where the config file (often a ConfigMap) shows it to every reader.
func (v *validator) checkSecretFiles(c *Config) {
	if c.Store.DSN != "" && dsnHasPassword(c.Store.DSN) {
		v.warnf([]string{"store", "dsn"}, "store.dsn holds a password inline; move the DSN to store.dsn_file (mode 0600) or SCANHOOK_STORE_DSN")
	}
	files := []struct {
		path []string
		file string
	}{
		{[]string{"store", "dsn_file"}, c.Store.DSNFile},
		{[]string{"defender", "client_secret_file"}, c.Defender.ClientSecretFile},
		{[]string{"defender", "client_certificate_file"}, c.Defender.ClientCertificateFile},
	}
	for _, name := range slices.Sorted(maps.Keys(c.Sources)) {
		a := c.Sources[name].Auth
		for _, f := range []struct{ key, file string }{
			{"bearer_token_file", a.BearerTokenFile},
			{"hmac_secret_file", a.HMACSecretFile},
			{"query_token_file", a.QueryTokenFile},
		} {
			files = append(files, struct {
				path []string
				file string
			}{[]string{"sources", name, "auth", f.key}, f.file})
		}
	}
	for _, f := range files {
		if f.file == "" {
			continue
		}
		fi, err := os.Stat(f.file)
		if err != nil || fi.Mode().Perm()&0o002 == 0 {
			continue // a missing file is Secrets' to report
		}
		v.warnf(f.path, "%s: %s is world-writable (mode %04o): anyone on the host can replace the secret; make it readable by scanhook only (chmod 0600)",
			strings.Join(f.path, "."), f.file, fi.Mode().Perm())
	}
}

// dsnHasPassword reports whether a DSN carries a password: a URL's
// user:password@, or a key=value DSN's password= .
func dsnHasPassword(dsn string) bool {
	if u, err := url.Parse(dsn); err == nil && u.User != nil {
		if _, ok := u.User.Password(); ok {
			return true
		}
	}
	return kvPassword.MatchString(dsn)
}

var kvPassword = regexp.MustCompile(`(?i)(^|\s)password\s*=`)

func (c *Config) resolvePaths(dir string) {
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	abs(&c.Rules)
	abs(&c.Store.DSNFile)
	if c.Store.Driver == "sqlite" && !strings.HasPrefix(c.Store.DSN, "file:") {
		abs(&c.Store.DSN)
	}
	abs(&c.Defender.ClientSecretFile)
	abs(&c.Defender.ClientCertificateFile)
	for name, s := range c.Sources {
		abs(&s.Auth.BearerTokenFile)
		abs(&s.Auth.HMACSecretFile)
		abs(&s.Auth.QueryTokenFile)
		c.Sources[name] = s
	}
}

type validator struct {
	file  string
	root  *yaml.Node
	errs  yamlpos.ErrorList
	warns []string
}

// errorf reports a problem at the node for path (a key path from the root);
// it falls back to the nearest existing parent, then to the file's start.
func (v *validator) errorf(path []string, format string, a ...any) {
	v.errs = append(v.errs, yamlpos.At(v.file, nodeAt(v.root, path), format, a...))
}

// warnf records something that loads but deserves the operator's attention.
func (v *validator) warnf(path []string, format string, a ...any) {
	v.warns = append(v.warns, yamlpos.At(v.file, keyNodeAt(v.root, path), format, a...).Error())
}

func (v *validator) check(c *Config) {
	if c.Listen == "" {
		v.errorf([]string{"listen"}, "listen: must not be empty (for example \":8080\")")
	}
	if c.Rules == "" {
		v.errorf([]string{"rules"}, "rules: must name the rule file")
	}
	switch c.Store.Driver {
	case "sqlite":
		if c.Store.DSN == "" {
			v.errorf([]string{"store", "dsn"}, "store.dsn: the SQLite file is required")
		}
	case "postgres":
		if c.Store.DSN != "" && c.Store.DSNFile != "" {
			v.errorf([]string{"store", "dsn_file"}, "store: set dsn or dsn_file, not both")
		}
	default:
		v.errorf([]string{"store", "driver"}, "store.driver: %q is not supported (want sqlite or postgres)", c.Store.Driver)
	}
	if err := c.Defender.Validate(); err != nil {
		v.errorf([]string{"defender"}, "%v", err)
	}
	names := make([]string, 0, len(c.Sources))
	for name := range c.Sources {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		s := c.Sources[name]
		p := []string{"sources", name}
		if !slices.Contains(domain.Sources(), name) {
			msg := fmt.Sprintf("sources: unknown source %q (want one of %s)", name, strings.Join(domain.Sources(), ", "))
			if sug := yamlpos.Suggest(name, domain.Sources()); sug != "" {
				msg += fmt.Sprintf("; did you mean %q?", sug)
			}
			v.errs = append(v.errs, yamlpos.At(v.file, keyNodeAt(v.root, p), "%s", msg))
			continue
		}
		hasAuth := s.Auth.BearerTokenFile != "" || s.Auth.HMACSecretFile != "" || s.Auth.QueryTokenFile != "" || s.Auth.Entra != nil
		if s.Auth.Entra != nil {
			v.checkEntra(append(p, "auth", "entra"), name, s.Auth.Entra)
		}
		if s.InsecureNoAuth && hasAuth {
			v.errorf(append(p, "insecure_no_auth"), "sources.%s: insecure_no_auth with auth configured is contradictory; remove one", name)
		}
		if s.InsecureNoAuth && !hasAuth && !c.InsecureNoAuthPublic && !loopbackListen(c.Listen) {
			v.errs = append(v.errs, yamlpos.At(v.file, keyNodeAt(v.root, append(p, "insecure_no_auth")),
				"sources.%s: insecure_no_auth on listen %q, which is not a loopback address, lets anyone who reaches the port send %s alerts; configure auth, listen on 127.0.0.1, or also set insecure_no_auth_public: true at the top level",
				name, c.Listen, name))
		}
		if s.Mapping != nil {
			if name != "generic" {
				v.errorf(append(p, "mapping"), "sources.%s.mapping: only the generic source takes a mapping", name)
			} else if err := s.Mapping.Validate(); err != nil {
				v.errorf(append(p, "mapping"), "sources.generic.mapping: %v", err)
			}
		}
		if s.Labels != nil {
			if name != "alertmanager" {
				v.errorf(append(p, "labels"), "sources.%s.labels: only the alertmanager source takes labels", name)
			} else if err := s.Labels.Validate(); err != nil {
				v.errorf(append(p, "labels"), "sources.alertmanager.labels: %v", err)
			}
		}
		if len(s.DeviceFields) > 0 {
			v.checkDeviceFields(p, name, s)
		}
		if name == "generic" && s.Mapping == nil {
			v.errorf(p, "sources.generic: a mapping is required for the generic source")
		}
	}
	if c.Server.MaxBodyBytes <= 0 {
		v.errorf([]string{"server", "max_body_bytes"}, "server.max_body_bytes: must be positive")
	}
	if c.Server.MaxInFlight < 1 {
		v.errorf([]string{"server", "max_in_flight"}, "server.max_in_flight: must be at least 1")
	}
	if c.Server.MaxUnverifiedInFlight < 1 {
		v.errorf([]string{"server", "max_unverified_in_flight"}, "server.max_unverified_in_flight: must be at least 1")
	}
	switch ut, rt := c.Server.UnverifiedReadTimeout, c.Server.ReadTimeout; {
	case ut <= 0:
		v.errorf([]string{"server", "unverified_read_timeout"}, "server.unverified_read_timeout: must be positive")
	case rt > 0 && ut > rt:
		v.errorf([]string{"server", "unverified_read_timeout"}, "server.unverified_read_timeout: must not exceed server.read_timeout (%s)", rt)
	}
	if c.Server.MaxDevicesPerDelivery < 1 {
		v.errorf([]string{"server", "max_devices_per_delivery"}, "server.max_devices_per_delivery: must be at least 1")
	}
	if k := keyNodeAt(v.root, []string{"server", "timer_slack"}); k != nil && k.Kind == yaml.ScalarNode && k.Value == "timer_slack" {
		v.warnf([]string{"server", "timer_slack"}, "server.timer_slack is deprecated and has no effect; remove it")
	}
	if c.Server.IngestPerSecond < 0 || c.Server.IngestBurst < 0 {
		v.errorf([]string{"server"}, "server: ingest_per_second and ingest_burst must not be negative")
	}
	if c.Server.IngestPerSecond > 0 && c.Server.IngestBurst < 1 {
		v.errorf([]string{"server", "ingest_burst"}, "server.ingest_burst: must be at least 1 when ingest_per_second is set")
	}
	d := c.Dispatch
	for _, f := range []struct {
		key string
		bad bool
	}{
		{"workers", d.Workers < 1},
		{"max_attempts", d.MaxAttempts < 1},
		{"max_age", d.MaxAge <= 0},
		{"backoff_base", d.BackoffBase <= 0},
		{"backoff_max", d.BackoffMax < d.BackoffBase},
		{"lease", d.Lease < time.Second},
		{"poll_interval", d.PollInterval < 100*time.Millisecond},
	} {
		if f.bad {
			v.errorf([]string{"dispatch", f.key}, "dispatch.%s: out of range", f.key)
		}
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		v.errorf([]string{"log", "level"}, "log.level: %q is not one of debug, info, warn, error", c.Log.Level)
	}
}

// checkDeviceFields: only the sources whose device fields are configurable
// take them, each a usable name (Alertmanager: a Prometheus label name).
func (v *validator) checkDeviceFields(p []string, name string, s Source) {
	at := append(slices.Clone(p), "device_fields")
	if !slices.Contains(deviceFieldSources, name) {
		v.errorf(at, "sources.%s.device_fields: only %s take device_fields", name, strings.Join(deviceFieldSources, " and "))
		return
	}
	var err error
	if name == domain.SourceAlertmanager {
		if s.Labels != nil && len(s.Labels.DNSNameLabels) > 0 {
			v.errorf(at, "sources.alertmanager: device_fields and labels.dns_name_labels are the same list; set device_fields only")
			return
		}
		err = alert.AlertmanagerOptions{DNSNameLabels: s.DeviceFields}.Validate()
		if err != nil {
			err = errors.New(strings.ReplaceAll(err.Error(), "dns_name_labels: ", ""))
		}
	} else {
		err = alert.ValidateFieldNames(s.DeviceFields)
	}
	if err != nil {
		v.errorf(at, "sources.%s.device_fields: %v", name, err)
	}
}

// loopbackListen reports whether a listen address accepts only local
// connections: localhost or a loopback IP. ":8080", "0.0.0.0:…" and host
// names other than localhost are public.
func loopbackListen(listen string) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// checkEntra refuses an entra block that would accept more than its author
// meant: every list holds GUIDs or non-empty values, tenants and audiences
// are required, and some caller restriction (client ids, object ids or
// roles) is required, since any app in an allowed tenant can get a token
// for scanhook's audience.
func (v *validator) checkEntra(p []string, name string, e *Entra) {
	key := "sources." + name + ".auth.entra"
	at := func(k string) []string { return append(slices.Clone(p), k) }
	if len(e.TenantIDs) == 0 {
		v.errorf(at("tenant_ids"), "%s.tenant_ids: list the tenant ids whose tokens are accepted", key)
	}
	for _, t := range e.TenantIDs {
		if !guidRE.MatchString(t) {
			v.errorf(at("tenant_ids"), "%s.tenant_ids: %q is not a tenant id (a GUID; common and organizations are not accepted)", key, t)
		}
	}
	if len(e.Audiences) == 0 {
		v.errorf(at("audiences"), "%s.audiences: list scanhook's app ID URI and/or client id", key)
	}
	for _, a := range e.Audiences {
		if strings.TrimSpace(a) == "" || strings.ContainsAny(a, " \t\r\n") {
			v.errorf(at("audiences"), "%s.audiences: %q is not an app ID URI or client id", key, a)
		}
	}
	for _, f := range []struct {
		k   string
		ids []string
	}{{"allowed_client_ids", e.AllowedClientIDs}, {"allowed_object_ids", e.AllowedObjectIDs}} {
		for _, id := range f.ids {
			if !guidRE.MatchString(id) {
				v.errorf(at(f.k), "%s.%s: %q is not a GUID", key, f.k, id)
			}
		}
	}
	for _, r := range e.RequiredRoles {
		if strings.TrimSpace(r) == "" || strings.ContainsAny(r, " \t\r\n") {
			v.errorf(at("required_roles"), "%s.required_roles: %q is not an app role value", key, r)
		}
	}
	if len(e.AllowedClientIDs) == 0 && len(e.AllowedObjectIDs) == 0 && len(e.RequiredRoles) == 0 {
		v.errorf(p, "%s: set allowed_client_ids, allowed_object_ids or required_roles; otherwise any app in the tenant could send alerts", key)
	}
}

var guidRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// nodeAt finds the value node at a key path, or the deepest one found.
func nodeAt(root *yaml.Node, path []string) *yaml.Node {
	n := docRoot(root)
	for _, key := range path {
		if n == nil || n.Kind != yaml.MappingNode {
			return n
		}
		var next *yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == key {
				next = n.Content[i+1]
				break
			}
		}
		if next == nil {
			return n
		}
		n = next
	}
	return n
}

// keyNodeAt finds the key node of the last path element (to point at a
// misspelled map key rather than at its value).
func keyNodeAt(root *yaml.Node, path []string) *yaml.Node {
	parent := nodeAt(root, path[:len(path)-1])
	if parent != nil && parent.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(parent.Content); i += 2 {
			if parent.Content[i].Value == path[len(path)-1] {
				return parent.Content[i]
			}
		}
	}
	return parent
}

func docRoot(n *yaml.Node) *yaml.Node {
	if n != nil && n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		return n.Content[0]
	}
	return n
}

// SourceSecrets are one source's credentials, read and checked.
type SourceSecrets struct {
	Bearer []byte
	HMAC   []byte
	Query  []byte
	// NoAuth is set only by an explicit insecure_no_auth: true.
	NoAuth bool
}

// minSecretLen keeps guessable tokens out: a webhook token is the only thing
// between the internet and Defender's scan button.
const minSecretLen = 16

// Secrets reads every source's credentials from its files or the
// environment. A listed source with none, and no insecure_no_auth, is an error.
func (c *Config) Secrets(getenv func(string) string, readFile func(string) ([]byte, error)) (map[string]SourceSecrets, error) {
	out := make(map[string]SourceSecrets, len(c.Sources))
	var errs []error
	for name, s := range c.Sources {
		prefix := "SCANHOOK_" + strings.ToUpper(name) + "_"
		var sec SourceSecrets
		var err error
		if sec.Bearer, err = secret(s.Auth.BearerTokenFile, prefix+"BEARER_TOKEN", getenv, readFile); err != nil {
			errs = append(errs, fmt.Errorf("sources.%s.auth.bearer_token_file: %w", name, err))
		}
		if sec.HMAC, err = secret(s.Auth.HMACSecretFile, prefix+"HMAC_SECRET", getenv, readFile); err != nil {
			errs = append(errs, fmt.Errorf("sources.%s.auth.hmac_secret_file: %w", name, err))
		}
		if sec.Query, err = secret(s.Auth.QueryTokenFile, prefix+"QUERY_TOKEN", getenv, readFile); err != nil {
			errs = append(errs, fmt.Errorf("sources.%s.auth.query_token_file: %w", name, err))
		}
		sec.NoAuth = s.InsecureNoAuth
		if !sec.NoAuth && sec.Bearer == nil && sec.HMAC == nil && sec.Query == nil && s.Auth.Entra == nil {
			errs = append(errs, fmt.Errorf("sources.%s: no credential configured: set auth.entra, auth.bearer_token_file, auth.hmac_secret_file or auth.query_token_file (or %sBEARER_TOKEN), or insecure_no_auth: true", name, prefix))
		}
		out[name] = sec
	}
	if len(errs) > 0 {
		slices.SortFunc(errs, func(a, b error) int { return strings.Compare(a.Error(), b.Error()) })
		return nil, errors.Join(errs...)
	}
	if err := c.checkSharedSecrets(out); err != nil {
		return nil, err
	}
	return out, nil
}

// checkSharedSecrets refuses a secret that two sources hold: with one,
// a body signed (or a token sent) for one source would be accepted on the
// other's route, so a sender could make its alerts pass for another SIEM's.
// The error points at the second source's key (its *_file key, or the
// source itself when the secret came from the environment) and names both.
func (c *Config) checkSharedSecrets(secrets map[string]SourceSecrets) error {
	names := slices.Sorted(maps.Keys(secrets))
	seen := map[string]secretHolder{}
	var errs yamlpos.ErrorList
	for _, name := range names {
		sec, s := secrets[name], c.Sources[name]
		prefix := "SCANHOOK_" + strings.ToUpper(name) + "_"
		for _, k := range []struct {
			v         []byte
			key, file string
			env       string
		}{
			{sec.Bearer, "bearer_token_file", s.Auth.BearerTokenFile, prefix + "BEARER_TOKEN"},
			{sec.HMAC, "hmac_secret_file", s.Auth.HMACSecretFile, prefix + "HMAC_SECRET"},
			{sec.Query, "query_token_file", s.Auth.QueryTokenFile, prefix + "QUERY_TOKEN"},
		} {
			if k.v == nil {
				continue
			}
			h := secretHolder{source: name, key: "sources." + name + ".auth." + k.key}
			path := []string{"sources", name, "auth", k.key}
			if k.file == "" {
				h.env, path = k.env, []string{"sources", name}
			}
			first, dup := seen[string(k.v)]
			if !dup {
				seen[string(k.v)] = h
				continue
			}
			if first.source == name {
				continue // one source may take the same token two ways
			}
			errs = append(errs, yamlpos.At(c.File, keyNodeAt(c.root, path),
				"%s holds the same secret as %s: a signature or token for source %s would pass as %s; give each source its own secret",
				h.describe(), first.describe(), first.source, name))
		}
	}
	return errs.Err()
}

// secretHolder is where one source's secret came from.
type secretHolder struct{ source, key, env string }

func (h secretHolder) describe() string {
	if h.env != "" {
		return "sources." + h.source + " (" + h.env + ")"
	}
	return h.key
}

// secret reads a secret from a file (trailing newline dropped) or an
// environment variable. The error never contains the secret.
func secret(file, env string, getenv func(string) string, readFile func(string) ([]byte, error)) ([]byte, error) {
	var v []byte
	switch {
	case file != "":
		b, err := readFile(file)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", file, cause(err))
		}
		v = []byte(strings.TrimRight(string(b), "\r\n"))
	case getenv(env) != "":
		v = []byte(getenv(env))
	default:
		return nil, nil
	}
	if len(v) < minSecretLen {
		return nil, fmt.Errorf("secret is shorter than %d characters", minSecretLen)
	}
	return v, nil
}

// StoreDSN returns the database DSN, from dsn, dsn_file or SCANHOOK_STORE_DSN.
func (c *Config) StoreDSN(getenv func(string) string, readFile func(string) ([]byte, error)) (string, error) {
	if c.Store.DSNFile != "" {
		b, err := readFile(c.Store.DSNFile)
		if err != nil {
			return "", fmt.Errorf("store.dsn_file: read %s: %w", c.Store.DSNFile, cause(err))
		}
		return strings.TrimSpace(string(b)), nil
	}
	if c.Store.DSN != "" {
		return c.Store.DSN, nil
	}
	if v := getenv("SCANHOOK_STORE_DSN"); v != "" {
		return v, nil
	}
	return "", errors.New("store: no DSN: set store.dsn, store.dsn_file or SCANHOOK_STORE_DSN")
}

// cause drops the op and path of an *fs.PathError, which the caller names.
func cause(err error) error {
	if inner := errors.Unwrap(err); inner != nil {
		return inner
	}
	return err
}

// AlertOptions is what the decoders need from the sources' settings.
func (c *Config) AlertOptions() alert.Options {
	var o alert.Options
	if s, ok := c.Sources["alertmanager"]; ok {
		if s.Labels != nil {
			o.Alertmanager = *s.Labels
		}
		if len(s.DeviceFields) > 0 {
			o.Alertmanager.DNSNameLabels = s.DeviceFields
		}
	}
	if s, ok := c.Sources["splunk"]; ok {
		o.Splunk.DeviceFields = s.DeviceFields
	}
	if s, ok := c.Sources["generic"]; ok {
		o.Generic = s.Mapping
	}
	return o
}

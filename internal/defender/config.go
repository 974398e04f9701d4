package defender

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// Config is the `defender:` section of the scanhook configuration file
// (docs/configuration.md). The config loader decodes YAML straight into it, so it holds
// plain fields only; New applies the defaults (see Effective).
type Config struct {
	// Cloud picks the API URL, authority host and scope: commercial (the
	// default), gcc, gcc-high or dod. The three fields below override it.
	Cloud         string `yaml:"cloud"`
	APIURL        string `yaml:"api_url"`
	AuthorityHost string `yaml:"authority_host"`
	Scope         string `yaml:"scope"`
	// Credential is default, workload-identity, managed-identity,
	// client-secret or client-certificate.
	Credential            string    `yaml:"credential"`
	TenantID              string    `yaml:"tenant_id"`
	ClientID              string    `yaml:"client_id"`
	ClientSecretFile      string    `yaml:"client_secret_file"`
	ClientCertificateFile string    `yaml:"client_certificate_file"`
	RateLimit             RateLimit `yaml:"rate_limit"`
	DryRun                bool      `yaml:"dry_run"`
	// Timeout bounds each API call, token acquisition included; 0 means 30s.
	Timeout time.Duration `yaml:"timeout"`
}

// RateLimit holds the Defender limits for each endpoint family. Zero means
// the documented limit (100 per minute, 1,500 per hour).
type RateLimit struct {
	PerMinute int `yaml:"per_minute"`
	PerHour   int `yaml:"per_hour"`
}

// The documented Defender limits and the client defaults.
const (
	DefaultPerMinute = 100
	DefaultPerHour   = 1500
	DefaultTimeout   = 30 * time.Second
)

// Cloud names accepted in Config.Cloud.
const (
	CloudCommercial = "commercial"
	CloudGCC        = "gcc"
	CloudGCCHigh    = "gcc-high"
	CloudDoD        = "dod"
)

// Credential kinds accepted in Config.Credential.
const (
	CredentialDefault           = "default"
	CredentialWorkloadIdentity  = "workload-identity"
	CredentialManagedIdentity   = "managed-identity"
	CredentialClientSecret      = "client-secret"
	CredentialClientCertificate = "client-certificate"
)

// CloudEndpoints is what a cloud name stands for.
type CloudEndpoints struct {
	APIURL        string
	AuthorityHost string
	Scope         string
}

// clouds follows docs/defender-api.md. The GCC and GCC High/DoD scopes are not
// confirmed by Microsoft's docs, which is why `scope` is overridable.
var clouds = map[string]CloudEndpoints{
	CloudCommercial: {
		APIURL:        "https://api.securitycenter.microsoft.com",
		AuthorityHost: "https://login.microsoftonline.com/",
		Scope:         "https://api.securitycenter.microsoft.com/.default",
	},
	CloudGCC: {
		APIURL:        "https://api-gcc.securitycenter.microsoft.us",
		AuthorityHost: "https://login.microsoftonline.com/",
		Scope:         "https://api-gcc.securitycenter.microsoft.us/.default",
	},
	CloudGCCHigh: {
		APIURL:        "https://api-gov.securitycenter.microsoft.us",
		AuthorityHost: "https://login.microsoftonline.us/",
		Scope:         "https://api-gov.securitycenter.microsoft.us/.default",
	},
	CloudDoD: {
		APIURL:        "https://api-gov.securitycenter.microsoft.us",
		AuthorityHost: "https://login.microsoftonline.us/",
		Scope:         "https://api-gov.securitycenter.microsoft.us/.default",
	},
}

// microsoftAuthorityHosts are the Entra ID hosts that instance discovery
// knows. Any other host (a sovereign proxy, the simulator) must run with
// instance discovery off, or MSAL would ask login.microsoft.com about it.
var microsoftAuthorityHosts = map[string]bool{
	"login.microsoftonline.com":        true,
	"login.microsoftonline.us":         true,
	"login.microsoft.com":              true,
	"login.windows.net":                true,
	"login.chinacloudapi.cn":           true,
	"login.partner.microsoftonline.cn": true,
}

// Cloud returns the endpoints of a cloud name.
func Cloud(name string) (CloudEndpoints, bool) {
	e, ok := clouds[strings.ToLower(strings.TrimSpace(name))]
	return e, ok
}

// Effective returns the configuration with defaults and the cloud's
// endpoints filled in. Overrides win over the cloud.
func (c Config) Effective() Config {
	if c.Cloud == "" {
		c.Cloud = CloudCommercial
	}
	c.Cloud = strings.ToLower(strings.TrimSpace(c.Cloud))
	if e, ok := clouds[c.Cloud]; ok {
		if c.APIURL == "" {
			c.APIURL = e.APIURL
		}
		if c.AuthorityHost == "" {
			c.AuthorityHost = e.AuthorityHost
		}
		if c.Scope == "" {
			c.Scope = e.Scope
		}
	}
	// A regional api_url (eu.api.security.microsoft.com) keeps the cloud's
	// scope: Entra ID issues one audience for all of them.
	c.APIURL = strings.TrimRight(c.APIURL, "/")
	if c.Credential == "" {
		c.Credential = CredentialDefault
	}
	if c.RateLimit.PerMinute == 0 {
		c.RateLimit.PerMinute = DefaultPerMinute
	}
	if c.RateLimit.PerHour == 0 {
		c.RateLimit.PerHour = DefaultPerHour
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	return c
}

// InstanceDiscoveryDisabled reports whether the effective authority host is
// not one of Microsoft's Entra ID hosts.
func (c Config) InstanceDiscoveryDisabled() bool {
	u, err := url.Parse(c.Effective().AuthorityHost)
	if err != nil {
		return true
	}
	return !microsoftAuthorityHosts[strings.ToLower(u.Hostname())]
}

// Validate checks the section. Every message names the key at fault.
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("defender.%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if c.Cloud != "" {
		if _, ok := Cloud(c.Cloud); !ok {
			bad("cloud", "unknown cloud %q (want commercial, gcc, gcc-high or dod)", c.Cloud)
		}
	}
	e := c.Effective()
	if err := checkHTTPSURL(e.APIURL); err != nil {
		bad("api_url", "%v", err)
	}
	if err := checkHTTPSURL(e.AuthorityHost); err != nil {
		bad("authority_host", "%v", err)
	}
	if strings.TrimSpace(e.Scope) == "" || strings.ContainsAny(e.Scope, " \t\r\n") {
		bad("scope", "must be one scope without spaces, such as https://api.securitycenter.microsoft.com/.default")
	}
	switch e.Credential {
	case CredentialDefault, CredentialWorkloadIdentity, CredentialManagedIdentity,
		CredentialClientSecret, CredentialClientCertificate:
	default:
		bad("credential", "unknown credential %q (want default, workload-identity, managed-identity, client-secret or client-certificate)", c.Credential)
	}
	if c.ClientSecretFile != "" && e.Credential != CredentialClientSecret {
		bad("client_secret_file", "is only used with credential client-secret (credential is %s)", e.Credential)
	}
	if c.ClientCertificateFile != "" && e.Credential != CredentialClientCertificate {
		bad("client_certificate_file", "is only used with credential client-certificate (credential is %s)", e.Credential)
	}
	if c.TenantID != "" && !tenantRE.MatchString(c.TenantID) {
		bad("tenant_id", "%q is not a tenant id or domain", c.TenantID)
	}
	if c.ClientID != "" && !uuidRE.MatchString(c.ClientID) {
		bad("client_id", "%q is not a GUID", c.ClientID)
	}
	if c.RateLimit.PerMinute < 0 {
		bad("rate_limit.per_minute", "must not be negative (got %d)", c.RateLimit.PerMinute)
	}
	if c.RateLimit.PerHour < 0 {
		bad("rate_limit.per_hour", "must not be negative (got %d)", c.RateLimit.PerHour)
	}
	if e.RateLimit.PerMinute > 0 && e.RateLimit.PerHour > 0 && e.RateLimit.PerMinute > e.RateLimit.PerHour {
		bad("rate_limit.per_minute", "%d is more than per_hour %d", e.RateLimit.PerMinute, e.RateLimit.PerHour)
	}
	if c.Timeout < 0 {
		bad("timeout", "must not be negative (got %s)", c.Timeout)
	}
	return errors.Join(errs...)
}

// checkHTTPSURL accepts an absolute https URL with a host and nothing after
// the path: the client appends /api/... to it and tokens must not travel in
// clear text.
func checkHTTPSURL(s string) error {
	if s == "" {
		return errors.New("must be set")
	}
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("%q is not a URL: %v", s, err)
	}
	if u.Scheme != "https" {
		return fmt.Errorf("%q must use https", s)
	}
	if u.Host == "" || u.Hostname() == "" {
		return fmt.Errorf("%q has no host", s)
	}
	if u.User != nil {
		return fmt.Errorf("%q must not carry user information", redactURL(u))
	}
	if u.RawQuery != "" || u.Fragment != "" || u.ForceQuery {
		return fmt.Errorf("%q must not have a query or fragment", s)
	}
	return nil
}

func redactURL(u *url.URL) string {
	c := *u
	c.User = nil
	return c.String()
}

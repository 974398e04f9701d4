package defender

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
)

// Environment variables read when the configuration leaves a value empty.
// They are azidentity's own names, so a workload identity pod works as is.
const (
	envTenantID            = "AZURE_TENANT_ID"
	envClientID            = "AZURE_CLIENT_ID"
	envClientSecret        = "AZURE_CLIENT_SECRET"
	envCertificatePath     = "AZURE_CLIENT_CERTIFICATE_PATH"
	envCertificatePassword = "AZURE_CLIENT_CERTIFICATE_PASSWORD"
	envFederatedTokenFile  = "AZURE_FEDERATED_TOKEN_FILE"
)

// newCredential builds the azidentity credential that cfg (effective)
// names. Every credential sends through transport, so a CA added with
// SSL_CERT_FILE or a test's simulator CA is trusted for Entra ID too.
func newCredential(cfg Config, deps Deps, transport http.RoundTripper) (azcore.TokenCredential, error) {
	opts := azcore.ClientOptions{
		Cloud: cloud.Configuration{ActiveDirectoryAuthorityHost: cfg.AuthorityHost},
		// The dispatcher retries whole calls with backoff; retrying the
		// token request here too would multiply attempts and outlast the
		// per-call deadline.
		Retry:     policy.RetryOptions{MaxRetries: -1},
		Transport: &http.Client{Transport: transport},
		Telemetry: policy.TelemetryOptions{ApplicationID: "scanhook"},
	}
	noDiscovery := cfg.InstanceDiscoveryDisabled()
	tenantID := firstNonEmpty(cfg.TenantID, deps.Getenv(envTenantID))
	clientID := firstNonEmpty(cfg.ClientID, deps.Getenv(envClientID))

	switch cfg.Credential {
	case CredentialDefault:
		// DefaultAzureCredential reads its environment itself (os.Getenv).
		c, err := azidentity.NewDefaultAzureCredential(&azidentity.DefaultAzureCredentialOptions{
			ClientOptions:            opts,
			DisableInstanceDiscovery: noDiscovery,
			TenantID:                 cfg.TenantID,
		})
		if err != nil {
			return nil, fmt.Errorf("defender.credential default: %w", err)
		}
		return c, nil

	case CredentialWorkloadIdentity:
		if err := need("tenant_id", envTenantID, tenantID); err != nil {
			return nil, err
		}
		if err := need("client_id", envClientID, clientID); err != nil {
			return nil, err
		}
		file := deps.Getenv(envFederatedTokenFile)
		if file == "" {
			return nil, fmt.Errorf("defender.credential workload-identity: %s is not set (is the pod labelled azure.workload.identity/use: \"true\"?)", envFederatedTokenFile)
		}
		c, err := azidentity.NewWorkloadIdentityCredential(&azidentity.WorkloadIdentityCredentialOptions{
			ClientOptions:            opts,
			ClientID:                 clientID,
			TenantID:                 tenantID,
			TokenFilePath:            file,
			DisableInstanceDiscovery: noDiscovery,
		})
		if err != nil {
			return nil, fmt.Errorf("defender.credential workload-identity: %w", err)
		}
		return c, nil

	case CredentialManagedIdentity:
		// IMDS is slow to answer right after a VM or pod starts; azidentity's
		// own retries for it are worth keeping.
		opts.Retry = policy.RetryOptions{}
		mo := &azidentity.ManagedIdentityCredentialOptions{ClientOptions: opts}
		if clientID != "" {
			mo.ID = azidentity.ClientID(clientID)
		}
		c, err := azidentity.NewManagedIdentityCredential(mo)
		if err != nil {
			return nil, fmt.Errorf("defender.credential managed-identity: %w", err)
		}
		return c, nil

	case CredentialClientSecret:
		if err := need("tenant_id", envTenantID, tenantID); err != nil {
			return nil, err
		}
		if err := need("client_id", envClientID, clientID); err != nil {
			return nil, err
		}
		secret := deps.Getenv(envClientSecret)
		if cfg.ClientSecretFile != "" {
			b, err := deps.ReadFile(cfg.ClientSecretFile)
			if err != nil {
				return nil, fmt.Errorf("defender.client_secret_file: %w", err)
			}
			secret = strings.TrimSpace(string(b))
			if secret == "" {
				return nil, fmt.Errorf("defender.client_secret_file: %s is empty", cfg.ClientSecretFile)
			}
		}
		if secret == "" {
			return nil, fmt.Errorf("defender.client_secret_file: not set and %s is empty", envClientSecret)
		}
		c, err := azidentity.NewClientSecretCredential(tenantID, clientID, secret, &azidentity.ClientSecretCredentialOptions{
			ClientOptions:            opts,
			DisableInstanceDiscovery: noDiscovery,
		})
		if err != nil {
			// azidentity's messages do not contain the secret.
			return nil, fmt.Errorf("defender.credential client-secret: %w", err)
		}
		return c, nil

	case CredentialClientCertificate:
		if err := need("tenant_id", envTenantID, tenantID); err != nil {
			return nil, err
		}
		if err := need("client_id", envClientID, clientID); err != nil {
			return nil, err
		}
		path := firstNonEmpty(cfg.ClientCertificateFile, deps.Getenv(envCertificatePath))
		if path == "" {
			return nil, fmt.Errorf("defender.client_certificate_file: not set and %s is empty", envCertificatePath)
		}
		key := "client_certificate_file"
		if cfg.ClientCertificateFile == "" {
			key = envCertificatePath
		}
		data, err := deps.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("defender.%s: %w", key, err)
		}
		var password []byte
		if p := deps.Getenv(envCertificatePassword); p != "" {
			password = []byte(p)
		}
		certs, pk, err := azidentity.ParseCertificates(data, password)
		if err != nil {
			return nil, fmt.Errorf("defender.%s: %s: %w", key, path, err)
		}
		c, err := azidentity.NewClientCertificateCredential(tenantID, clientID, certs, pk, &azidentity.ClientCertificateCredentialOptions{
			ClientOptions:            opts,
			DisableInstanceDiscovery: noDiscovery,
		})
		if err != nil {
			return nil, fmt.Errorf("defender.credential client-certificate: %w", err)
		}
		return c, nil
	}
	return nil, fmt.Errorf("defender.credential: unknown credential %q", cfg.Credential)
}

func need(key, env, value string) error {
	if value == "" {
		return fmt.Errorf("defender.%s: not set and %s is empty", key, env)
	}
	return nil
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

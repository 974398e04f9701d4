package app

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/scanhook/scanhook/examples"
	"github.com/scanhook/scanhook/internal/config"
	"github.com/scanhook/scanhook/internal/defendersim"
	"github.com/scanhook/scanhook/internal/domain"
)

// demoListen is where the demo listens unless told otherwise; if it is
// taken, the demo picks a free port rather than failing a first-time user.
const demoListen = "127.0.0.1:8080"

// The demo's Entra ID sender: scanhook's app ID URI, the Logic App's managed
// identity and the app role it was granted.
const (
	demoAudience   = "api://scanhook-demo"
	demoLogicAppID = "5b0c7c62-7c0e-4f3a-9d1e-0d3f2a9b6c41"
	demoRole       = "Alerts.Submit"
)

// demoMachines are the devices the demo's sample alerts name, so that their
// scans succeed in the simulator; fin-ws-022 is named by DNS only in the
// Sentinel sample, which shows name resolution.
func demoMachines() []defendersim.Machine {
	return []defendersim.Machine{
		{ID: "4d2c8e1f0a9b7c6d5e4f3a2b1c0d9e8f7a6b5c4d", ComputerDNSName: "fin-ws-014.corp.contoso.com", OSPlatform: "Windows11", HealthStatus: "Active"},
		{ID: "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b", ComputerDNSName: "fin-ws-022.corp.contoso.com", OSPlatform: "Windows11", HealthStatus: "Active"},
		{ID: "111e6dd8c833c8a052ea231ec1b19adaf497b625", ComputerDNSName: "temp123.middleeast.corp.microsoft.com", OSPlatform: "Windows10", HealthStatus: "Active"},
	}
}

// RunDemo lays out a complete, ordinary configuration in a temporary
// folder (so a user can read it and copy from it), starts the simulator,
// and runs the same service code as `serve --config`.
func RunDemo(ctx context.Context, env Env, listen string) error {
	dir, err := os.MkdirTemp("", "scanhook-demo-")
	if err != nil {
		return fmt.Errorf("demo folder: %w", err)
	}
	sim, err := defendersim.New(defendersim.Options{
		Machines: append(defendersim.GenerateMachines(20), demoMachines()...),
		Logger:   slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return fmt.Errorf("demo simulator: %w", err)
	}
	if err := sim.Start("127.0.0.1:0"); err != nil {
		return fmt.Errorf("demo simulator: %w", err)
	}
	defer sim.Close()

	// Each source has its own token: no two sources may share a secret.
	tokens := map[string]string{}
	files := map[string][]byte{
		"defender-client-secret": []byte(defendersim.DefaultClientSecret),
		"rules.yaml":             examples.Rules(),
		"sentinel-incident.json": examples.SentinelIncident(),
		"defender-alert.json":    examples.DefenderAlert(),
	}
	for _, s := range domain.Sources() {
		tokens[s] = randomHex(16)
		files["webhook-token-"+s] = []byte(tokens[s])
	}
	// The sentinel source also takes Entra ID tokens, as a Logic App with a
	// managed identity sends them; the simulator is the issuer.
	entraToken, err := sim.MintSenderToken(defendersim.SenderToken{
		Audience: demoAudience, ObjectID: demoLogicAppID, Roles: []string{demoRole},
		Expires: time.Now().Add(24 * time.Hour),
	})
	if err != nil {
		return fmt.Errorf("demo: Entra ID token: %w", err)
	}
	files["entra-token"] = []byte(entraToken)
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			return fmt.Errorf("demo: write %s: %w", name, err)
		}
	}
	if listen == "" {
		listen = demoListen
		if ln, err := net.Listen("tcp", listen); err != nil {
			if !errors.Is(err, syscall.EADDRINUSE) {
				return fmt.Errorf("listen on %s: %w", listen, err)
			}
			listen = "127.0.0.1:0"
		} else {
			ln.Close()
		}
	}
	var sources strings.Builder
	for _, s := range domain.Sources() {
		if s == domain.SourceGeneric {
			continue // it needs a mapping, which is yours to write
		}
		fmt.Fprintf(&sources, "  %[1]s:\n    auth:\n      bearer_token_file: webhook-token-%[1]s\n", s)
		if s == domain.SourceSplunk {
			fmt.Fprintf(&sources, "      query_token_file: webhook-token-%s\n", s)
		}
		if s == domain.SourceSentinel {
			fmt.Fprintf(&sources, "      entra: {tenant_ids: [%s], audiences: [%s], allowed_object_ids: [%s], required_roles: [%s]}\n",
				defendersim.DefaultTenantID, demoAudience, demoLogicAppID, demoRole)
		}
	}
	cfgText := fmt.Sprintf(`# Written by scanhook serve --demo. Every path is relative to this file.
listen: %q
rules: rules.yaml
store:
  driver: sqlite
  dsn: scanhook.db
defender:
  api_url: %s
  authority_host: %s/
  credential: client-secret
  tenant_id: %s
  client_id: %s
  client_secret_file: defender-client-secret
sources:
%sdispatch:
  poll_interval: 2s
log:
  level: info
`, listen, sim.URL(), sim.URL(), defendersim.DefaultTenantID, defendersim.DefaultClientID, sources.String())
	cfgPath := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfgText), 0o600); err != nil {
		return fmt.Errorf("demo: write config: %w", err)
	}
	cfg, err := config.Parse(cfgPath, []byte(cfgText))
	if err != nil {
		return fmt.Errorf("demo config: %w", err)
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.TLSClientConfig = &tls.Config{RootCAs: sim.CertPool(), MinVersion: tls.VersionTLS12}

	return Run(ctx, cfg, env, Hooks{
		Transport: transport,
		Listening: func(addr net.Addr) { printDemoBanner(env.stdout(), dir, addr.String(), tokens, sim.URL()) },
	})
}

// printDemoBanner shows the sentinel source's token as "token" (any
// source's token also reads); each curl carries its own source's token.
func printDemoBanner(w io.Writer, dir, addr string, tokens map[string]string, simURL string) {
	base := "http://" + addr
	token := tokens[domain.SourceSentinel]
	post := func(source, file string) string {
		return fmt.Sprintf("curl -sS -H 'Authorization: Bearer %s' -H 'Content-Type: application/json' \\\n    --data-binary @%s %s/v1/webhooks/%s",
			tokens[source], filepath.Join(dir, file), base, source)
	}
	fmt.Fprintf(w, `scanhook demo: listening on %[1]s (Ctrl-C to stop)

  config    %[2]s/config.yaml
  rules     %[2]s/rules.yaml  (edit it: changes apply within seconds)
  store     %[2]s/scanhook.db (SQLite)
  Defender  built-in simulator at %[3]s (scans go Pending -> InProgress -> Succeeded in about 7s)
  token     %[4]s  (the sentinel source's; each source has its own, in webhook-token-SOURCE)

Send a Sentinel incident naming two hosts (ransomware: Full scans):
  %[5]s

Send a Defender alert (malware, high severity):
  %[6]s

Each answer carries a receipt. Follow its scans to Succeeded:
  curl -sS -H 'Authorization: Bearer %[4]s' %[1]s/v1/receipts/RECEIPT
Or the audit trail, newest first:
  curl -sS -H 'Authorization: Bearer %[4]s' '%[1]s/v1/scans?limit=10'

Send the same alert again: the same receipt comes back with "duplicate": true, and nothing new is queued.

Or send it as a Logic App with a managed identity would, with an Entra ID token and no shared
secret (the simulator issued it; see docs/entra-id.md):
  curl -sS -H "Authorization: Bearer $(cat %[2]s/entra-token)" -H 'Content-Type: application/json' \
    --data-binary @%[2]s/sentinel-incident.json %[1]s/v1/webhooks/sentinel
`, base, dir, simURL, token, post("sentinel", "sentinel-incident.json"), post("defender", "defender-alert.json"))
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

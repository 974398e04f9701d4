package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/scanhook/scanhook/internal/defendersim"
)

// config is what the flags say.
type config struct {
	addr, machinesFile, caFile, secretFile, adminTokenFile string
	tenantID, clientID, finalStatus, duplicateScan         string
	logLevel                                               string
	generate, perMinute, perHour                           int
	pending, inProgress                                    time.Duration
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("defender-sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.addr, "addr", "127.0.0.1:8443", "TLS listen address")
	fs.StringVar(&c.machinesFile, "machines", "", "JSON file with the machine inventory (an array of {id, computerDnsName, osPlatform, healthStatus, aadDeviceId, machineTags, lastIpAddress})")
	fs.IntVar(&c.generate, "generate", 50, "number of machines to generate when --machines is not given")
	fs.StringVar(&c.caFile, "ca-file", "defender-sim-ca.pem", "where to write the CA certificate (for SSL_CERT_FILE)")
	fs.DurationVar(&c.pending, "pending", 2*time.Second, "how long a new action stays Pending")
	fs.DurationVar(&c.inProgress, "in-progress", 5*time.Second, "how long an action then stays InProgress")
	fs.StringVar(&c.finalStatus, "final-status", defendersim.StatusSucceeded, "final status of actions: Succeeded, Failed, TimeOut or Cancelled")
	fs.StringVar(&c.duplicateScan, "duplicate-scan", defendersim.DuplicateScanError, "a scan while one is pending: error (400) or existing (201 with the pending action)")
	fs.StringVar(&c.tenantID, "tenant-id", defendersim.DefaultTenantID, "accepted tenant id")
	fs.StringVar(&c.clientID, "client-id", defendersim.DefaultClientID, "accepted application (client) id")
	fs.StringVar(&c.secretFile, "client-secret-file", "", "file holding the accepted client secret; when empty a random secret is written to defender-sim-client-secret beside --ca-file")
	fs.StringVar(&c.adminTokenFile, "admin-token-file", "", "file holding the /admin bearer token; random when empty")
	fs.IntVar(&c.perMinute, "rate-per-minute", 100, "accepted calls per application and family in any sliding minute")
	fs.IntVar(&c.perHour, "rate-per-hour", 1500, "accepted calls per application and family in any sliding hour")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if c.generate < 1 && c.machinesFile == "" {
		return c, fmt.Errorf("--generate must be at least 1, got %d", c.generate)
	}
	if c.perMinute < 1 || c.perHour < 1 {
		return c, errors.New("--rate-per-minute and --rate-per-hour must be at least 1")
	}
	return c, nil
}

func readMachines(path string) ([]defendersim.Machine, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read machines: %w", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	var ms []defendersim.Machine
	if err := dec.Decode(&ms); err != nil {
		return nil, fmt.Errorf("decode machines %s: %w", path, err)
	}
	if len(ms) == 0 {
		return nil, fmt.Errorf("machines %s: the list is empty", path)
	}
	return ms, nil
}

func readSecret(path, what string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", what, err)
	}
	v := strings.TrimSpace(string(b))
	if v == "" {
		return "", fmt.Errorf("%s file %s is empty", what, path)
	}
	return v, nil
}

// run starts the simulator, prints how to use it, and serves until ctx ends.
// ready, when not nil, is called once the listener is up (for tests).
func run(ctx context.Context, args []string, stdout, stderr io.Writer, ready func(*defendersim.Server)) int {
	c, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "defender-sim:", err)
		return 2
	}
	if err := serve(ctx, c, stdout, stderr, ready); err != nil {
		fmt.Fprintln(stderr, "defender-sim:", err)
		return 1
	}
	return 0
}

func serve(ctx context.Context, c config, stdout, stderr io.Writer, ready func(*defendersim.Server)) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	logger := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level}))
	opts := defendersim.Options{
		TenantID: c.tenantID, ClientID: c.clientID,
		GenerateMachines: c.generate,
		PendingFor:       c.pending, InProgressFor: c.inProgress,
		FinalStatus:   c.finalStatus,
		DuplicateScan: c.duplicateScan,
		RateLimit:     defendersim.RateLimit{PerMinute: c.perMinute, PerHour: c.perHour},
		Logger:        logger,
	}
	if c.machinesFile != "" {
		ms, err := readMachines(c.machinesFile)
		if err != nil {
			return err
		}
		opts.Machines = ms
	}
	caFile, err := filepath.Abs(c.caFile)
	if err != nil {
		return fmt.Errorf("--ca-file: %w", err)
	}
	secretFile := c.secretFile
	if secretFile != "" {
		if opts.ClientSecret, err = readSecret(secretFile, "client secret"); err != nil {
			return err
		}
	} else {
		b := make([]byte, 24)
		if _, err := rand.Read(b); err != nil {
			return fmt.Errorf("client secret: %w", err)
		}
		opts.ClientSecret = hex.EncodeToString(b)
		secretFile = filepath.Join(filepath.Dir(caFile), "defender-sim-client-secret")
		if err := os.WriteFile(secretFile, []byte(opts.ClientSecret+"\n"), 0o600); err != nil {
			return fmt.Errorf("write client secret: %w", err)
		}
	}
	if secretFile, err = filepath.Abs(secretFile); err != nil {
		return fmt.Errorf("--client-secret-file: %w", err)
	}
	if c.adminTokenFile != "" {
		if opts.AdminToken, err = readSecret(c.adminTokenFile, "admin token"); err != nil {
			return err
		}
	}
	sim, err := defendersim.New(opts)
	if err != nil {
		return err
	}
	if err := sim.WriteCAFile(caFile); err != nil {
		return err
	}
	if err := sim.Start(c.addr); err != nil {
		return err
	}
	printBanner(stdout, sim, caFile, secretFile)
	if ready != nil {
		ready(sim)
	}
	<-ctx.Done()
	logger.Info("defender-sim shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return sim.Shutdown(sctx)
}

func printBanner(w io.Writer, sim *defendersim.Server, caFile, secretFile string) {
	o := sim.Options()
	ms := sim.Machines()
	fmt.Fprintf(w, `defender-sim: Microsoft Defender for Endpoint + Entra ID simulator

  API base URL and authority host: %[1]s
  tenant id:          %[2]s
  client id:          %[3]s
  client secret file: %[4]s
  CA certificate:     %[5]s  (trust it with SSL_CERT_FILE)
  admin token:        %[6]s  (Authorization: Bearer ... on %[1]s/admin/{faults,outcome,requests,actions,stats,machines})
  sender tokens:      Entra ID issuer for webhook senders: metadata %[1]s/%[2]s/.well-known/openid-configuration (v1)
                      and %[1]s/%[2]s/v2.0/.well-known/openid-configuration (v2); mint with
                      POST %[1]s/admin/entra/token {"audience":"api://scanhook","client_id":"...","roles":["Alerts.Submit"]},
                      rotate the signing key with POST %[1]s/admin/entra/rotate
  actions:            Pending %[7]v, InProgress %[8]v, then %[9]s
  rate limits:        %[10]d per sliding minute, %[11]d per sliding hour, per application and family

scanhook configuration (defender section):

defender:
  api_url: %[1]s
  authority_host: %[1]s/
  scope: %[12]s/.default
  credential: client-secret
  tenant_id: %[2]s
  client_id: %[3]s
  client_secret_file: %[4]s

then, e.g.:

  SSL_CERT_FILE=%[5]s scanhook scan --config scanhook.yaml --machine %[13]s --type Quick --comment "defender-sim test"

machines (%[14]d in all):
`, sim.URL(), o.TenantID, o.ClientID, secretFile, caFile, o.AdminToken,
		o.PendingFor, o.InProgressFor, o.FinalStatus, o.RateLimit.PerMinute, o.RateLimit.PerHour, o.Audience,
		ms[0].ComputerDNSName, len(ms))
	for i, m := range ms {
		if i == 5 {
			fmt.Fprintf(w, "  ... (GET %s/admin/machines for all)\n", sim.URL())
			break
		}
		fmt.Fprintf(w, "  %s  %-24s %s\n", m.ID, m.ComputerDNSName, m.OSPlatform)
	}
}

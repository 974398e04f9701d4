package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"strings"

	"github.com/scanhook/scanhook/internal/alert"
	"github.com/scanhook/scanhook/internal/defender"
	"github.com/scanhook/scanhook/internal/domain"
)

// Exit codes of `scanhook scan`, distinct so scripts can tell outcomes apart.
const (
	ExitAlreadyScanning = 3 // Defender already has a scan pending on the machine
	ExitNotFound        = 4 // no such machine
	ExitAuth            = 5 // the credential was refused, or lacks Machine.Scan
	ExitUnavailable     = 6 // throttled, server error, timeout, network: try later
)

// scan runs one manual scan through the configured client and prints the
// MachineAction as JSON.
func scan(ctx context.Context, args []string, env Env) error {
	fs := flag.NewFlagSet("scan", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	configFile := fs.String("config", env.getenv("SCANHOOK_CONFIG"), "service config file (or SCANHOOK_CONFIG)")
	machine := fs.String("machine", "", "Defender machine id (40 hex characters), computer DNS or bare computer name, or Azure AD device id (a GUID)")
	scanType := fs.String("type", "", "Quick or Full")
	comment := fs.String("comment", "", "comment recorded with the action in Defender")
	fs.Usage = func() {
		fmt.Fprintln(env.Stderr, "Usage: scanhook scan --config FILE --machine ID|DNSNAME --type Quick|Full --comment TEXT\n\nRequests one antivirus scan and prints the MachineAction as JSON.\nExit codes: 0 requested, 1 error, 2 usage, 3 already scanning, 4 machine not found, 5 auth refused, 6 Defender unavailable (retry later).")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return flagErr(err)
	}
	if fs.NArg() > 0 {
		return usagef("scan: unexpected argument %q", fs.Arg(0))
	}
	switch {
	case *configFile == "":
		return usagef("scan: --config is required")
	case *machine == "":
		return usagef("scan: --machine is required")
	case *comment == "":
		return usagef("scan: --comment is required (it is how the scan is explained in Defender)")
	}
	st, err := domain.ParseScanType(*scanType)
	if err != nil {
		return usagef("scan: --type %q: want Quick or Full", *scanType)
	}
	id := strings.ToLower(strings.TrimSpace(*machine))
	byAAD := defender.ValidActionID(id) // the same GUID shape
	byName := !alert.ValidMachineID(id) && !byAAD
	if byName && !alert.ValidDNSName(strings.TrimSuffix(id, ".")) {
		return usagef("scan: --machine %q is neither a machine id (40 hex characters), a DNS name nor an Azure AD device id", *machine)
	}

	cfg, err := loadConfig(env, *configFile)
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(env.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	client, err := defender.New(cfg.Defender, defender.Deps{Logger: logger, Getenv: env.Getenv, ReadFile: env.ReadFile})
	if err != nil {
		return fmt.Errorf("defender client: %w", err)
	}
	if byName || byAAD {
		m, err := findMachine(ctx, client, strings.TrimSuffix(id, "."), byAAD)
		if err != nil {
			return scanExit(fmt.Errorf("resolve machine %q: %w", *machine, err))
		}
		id = m.ID
	}
	action, err := client.RunAntiVirusScan(ctx, id, st, *comment)
	if action != nil {
		enc := json.NewEncoder(env.Stdout)
		enc.SetIndent("", "  ")
		if encErr := enc.Encode(action); encErr != nil {
			return fmt.Errorf("write action: %w", encErr)
		}
	}
	if err != nil {
		return scanExit(fmt.Errorf("scan machine %s: %w", id, err))
	}
	return nil
}

// findMachine looks a machine up as the dispatcher does: an AAD device id
// by aadDeviceId, a name by its DNS name or as a bare computer name.
func findMachine(ctx context.Context, client *defender.Client, name string, aad bool) (*defender.Machine, error) {
	if aad {
		return client.FindMachineByAADDeviceID(ctx, name)
	}
	return client.FindMachineByComputerName(ctx, name)
}

// scanExit maps a Defender error kind to the command's exit code.
func scanExit(err error) error {
	code := ExitInvalid
	switch defender.KindOf(err) {
	case defender.AlreadyScanning:
		code = ExitAlreadyScanning
	case defender.NotFound:
		code = ExitNotFound
	case defender.Unauthorized, defender.Forbidden:
		code = ExitAuth
	case defender.Throttled, defender.Server, defender.Timeout, defender.Network, defender.Unavailable:
		code = ExitUnavailable
	}
	var de *defender.Error
	if errors.As(err, &de) && de.Kind == defender.AlreadyScanning {
		return exitError{code: code, err: fmt.Errorf("already scanning: Defender has a scan pending on this machine; nothing new requested (%w)", err)}
	}
	return exitError{code: code, err: err}
}

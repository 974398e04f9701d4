package cli

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/scanhook/scanhook/internal/alert"
	"github.com/scanhook/scanhook/internal/domain"
	"github.com/scanhook/scanhook/internal/yamlpos"
	"github.com/scanhook/scanhook/rules"
)

// rulesCheck validates rule files: every problem on its own line as
// FILE:LINE:COL: message, exit 0 when all are valid and 1 otherwise.
func rulesCheck(args []string, env Env) error {
	fs := flag.NewFlagSet("rules check", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	maxComment := fs.Int("max-comment-length", 0, "cap on rendered comments, in characters (0: the default, 1000)")
	fs.Usage = func() {
		fmt.Fprintln(env.Stderr, "Usage: scanhook rules check FILE...\n\nValidates rule files; prints each problem as FILE:LINE:COL: message.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return flagErr(err)
	}
	if fs.NArg() == 0 {
		return usagef("rules check: no rule file given")
	}
	bad := 0
	for _, name := range fs.Args() {
		data, err := env.readFile(name)
		if err != nil {
			fmt.Fprintf(env.Stdout, "%s: %v\n", name, unwrapPathError(err))
			bad++
			continue
		}
		rs, err := rules.Load(name, data, rules.Options{MaxCommentLen: *maxComment})
		if err != nil {
			bad++
			printLoadErrors(env.Stdout, name, err)
			continue
		}
		fmt.Fprintf(env.Stdout, "%s: ok, %d rules\n", name, rs.Len())
	}
	if bad > 0 {
		return exitError{code: ExitInvalid, err: fmt.Errorf("%d of %d rule files invalid", bad, fs.NArg())}
	}
	return nil
}

// printLoadErrors prints one problem per line; an error that carries no
// position still names the file.
func printLoadErrors(w io.Writer, name string, err error) {
	var list yamlpos.ErrorList
	if errors.As(err, &list) && len(list) > 0 {
		for _, e := range list {
			fmt.Fprintln(w, e.Error())
		}
		return
	}
	var one *yamlpos.Error
	if errors.As(err, &one) {
		fmt.Fprintln(w, one.Error())
		return
	}
	fmt.Fprintf(w, "%s: %v\n", name, err)
}

// testLine is one line of `rules test` output; the key order is the contract's.
type testLine struct {
	AlertID string      `json:"alert_id"`
	Source  string      `json:"source"`
	Device  *testDevice `json:"device"`
	Rule    string      `json:"rule"`
	Scan    string      `json:"scan"`
	Comment string      `json:"comment"`
	Reason  string      `json:"reason"`
}

type testDevice struct {
	ID      string `json:"id"`
	DNSName string `json:"dns_name"`
}

// rulesTest evaluates alert files against a rule file with no side effects
// and prints one JSON object per (alert, device).
func rulesTest(args []string, env Env) error {
	fs := flag.NewFlagSet("rules test", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	rulesFile := fs.String("rules", "", "rule file (required)")
	source := fs.String("source", "", "alert source: "+strings.Join(domain.Sources(), ", ")+" (required)")
	configFile := fs.String("config", "", "service config, for the alertmanager label names and the generic mapping")
	fs.Usage = func() {
		fmt.Fprintln(env.Stderr, "Usage: scanhook rules test --rules FILE --source SOURCE [--config FILE] ALERT.json...\n\nEvaluates alerts against rules without side effects; prints one JSON line per (alert, device). '-' reads standard input.")
		fs.PrintDefaults()
	}
	// Accept flags after the alert files too (`rules test a.json --source x`).
	files, err := parseInterleaved(fs, args)
	if err != nil {
		return flagErr(err)
	}
	if *rulesFile == "" {
		return usagef("rules test: --rules is required")
	}
	if *source == "" {
		return usagef("rules test: --source is required")
	}
	if !slices.Contains(domain.Sources(), *source) {
		return usagef("rules test: unknown source %q (want one of %s)", *source, strings.Join(domain.Sources(), ", "))
	}
	if len(files) == 0 {
		return usagef("rules test: no alert file given")
	}
	opts, err := alertOptionsFromConfig(env, *configFile)
	if err != nil {
		return err
	}
	data, err := env.readFile(*rulesFile)
	if err != nil {
		return fmt.Errorf("read rules: %w", unwrapPathError(err))
	}
	rs, err := rules.Load(*rulesFile, data, rules.Options{})
	if err != nil {
		printLoadErrors(env.Stderr, *rulesFile, err)
		return exitError{code: ExitInvalid, err: fmt.Errorf("rule file %s is invalid", *rulesFile)}
	}

	enc := json.NewEncoder(env.Stdout)
	enc.SetEscapeHTML(false)
	failed := 0
	for _, name := range files {
		body, err := readAlertFile(env, name)
		if err != nil {
			fmt.Fprintf(env.Stderr, "scanhook: alert file %s: %v\n", name, err)
			failed++
			continue
		}
		alerts, err := alert.Decode(*source, body, opts)
		if err != nil {
			fmt.Fprintf(env.Stderr, "scanhook: alert file %s: not a valid %s alert: %v\n", name, *source, err)
			failed++
			continue
		}
		if len(alerts) == 0 {
			fmt.Fprintf(env.Stderr, "scanhook: alert file %s: holds no alert\n", name)
			continue
		}
		for i := range alerts {
			for _, d := range rs.Evaluate(&alerts[i]) {
				line := testLine{
					AlertID: d.AlertID, Source: d.Source, Rule: d.Rule,
					Scan: d.Scan, Comment: d.Comment, Reason: d.Reason,
				}
				if d.Device != nil {
					line.Device = &testDevice{ID: d.Device.ID, DNSName: d.Device.DNSName}
				}
				if err := enc.Encode(line); err != nil {
					return fmt.Errorf("write output: %w", err)
				}
			}
		}
	}
	if failed > 0 {
		return exitError{code: ExitInvalid, err: fmt.Errorf("%d of %d alert files could not be read", failed, len(files))}
	}
	return nil
}

// maxAlertFile bounds what `rules test` reads, as the webhook bounds bodies.
const maxAlertFile = 16 << 20

func readAlertFile(env Env, name string) ([]byte, error) {
	if name == "-" {
		if env.Stdin == nil {
			return nil, errors.New("no standard input")
		}
		b, err := io.ReadAll(io.LimitReader(env.Stdin, maxAlertFile+1))
		if err != nil {
			return nil, err
		}
		if len(b) > maxAlertFile {
			return nil, fmt.Errorf("larger than %d bytes", maxAlertFile)
		}
		return b, nil
	}
	b, err := env.readFile(name)
	if err != nil {
		return nil, unwrapPathError(err)
	}
	if len(b) > maxAlertFile {
		return nil, fmt.Errorf("larger than %d bytes", maxAlertFile)
	}
	return b, nil
}

// parseInterleaved parses flags that may come before or after positional
// arguments, as users of `rules test` naturally type both orders.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if rest[0] == "--" {
			return append(pos, rest[1:]...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

func flagErr(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return exitError{code: ExitOK}
	}
	return exitError{code: ExitUsage, err: err}
}

// unwrapPathError drops the op and path from *fs.PathError: the caller
// already names the file.
func unwrapPathError(err error) error {
	var pe interface{ Unwrap() error }
	if errors.As(err, &pe) {
		if inner := pe.Unwrap(); inner != nil && strings.Contains(err.Error(), inner.Error()) {
			return inner
		}
	}
	return err
}

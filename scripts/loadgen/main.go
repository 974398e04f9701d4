// Command loadgen is the helper of scripts/load.sh. It owns what the load
// tool cannot do by itself: picking a free loopback port, and writing an
// endless stream of vegeta JSON targets, each a real Defender alert (the
// documented sample) with a unique id naming one device of the simulator's
// inventory, so that every request is a new durable insert and the rules
// make real decisions (queued, duplicate, cooldown, skipped).
//
//	loadgen port
//	loadgen targets -url URL -token-file F -machines F -sample F [-devices N] [-run ID] [-low-every K] [-n COUNT]
package main

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
)

func main() {
	// vegeta stops reading when its duration ends: a write to the closed
	// pipe must end the stream quietly instead of killing us with SIGPIPE.
	signal.Ignore(syscall.SIGPIPE)
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: loadgen port | loadgen targets [flags]")
		return 2
	}
	var err error
	switch args[0] {
	case "port":
		err = freePort(stdout)
	case "targets":
		err = targets(args[1:], stdout, stderr)
	default:
		err = fmt.Errorf("unknown command %q (want port or targets)", args[0])
	}
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "loadgen:", err)
		return 1
	}
	return 0
}

// freePort prints a loopback port that was free a moment ago. The window
// between closing it here and the service binding it is a race the script
// accepts: it fails loudly if the port was taken meanwhile.
func freePort(w io.Writer) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("free port: %w", err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if err := ln.Close(); err != nil {
		return fmt.Errorf("free port: %w", err)
	}
	_, err = fmt.Fprintln(w, port)
	return err
}

type genOptions struct {
	url, token string
	machines   []machine
	sample     []byte
	devices    int
	run        string
	lowEvery   int
	count      int64 // 0: endless
	seed       uint64
}

// machine is the part of the simulator's /admin/machines entries we use.
type machine struct {
	ID              string `json:"id"`
	ComputerDNSName string `json:"computerDnsName"`
}

func targets(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("loadgen targets", flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("url", "", "webhook URL, e.g. http://127.0.0.1:8080/v1/webhooks/defender")
	tokenFile := fs.String("token-file", "", "file holding the source's bearer token")
	machinesFile := fs.String("machines", "", "the simulator's GET /admin/machines answer ({\"value\": [...]})")
	sampleFile := fs.String("sample", "testdata/samples/mde-alert.json", "Defender alert used as the template")
	devices := fs.Int("devices", 500, "how many machines of the inventory the alerts name")
	runID := fs.String("run", "load", "prefix of the alert ids (keep it unique per run)")
	lowEvery := fs.Int("low-every", 4, "every Kth alert is Low severity (no scan); the others are High (0: none Low)")
	count := fs.Int64("n", 0, "stop after this many targets (0: until the reader goes away)")
	seed := fs.Uint64("seed", 1, "seed of the device choice, so runs are comparable")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	o := genOptions{url: *url, devices: *devices, run: *runID, lowEvery: *lowEvery, count: *count, seed: *seed}
	if o.url == "" {
		return errors.New("-url is required")
	}
	tok, err := os.ReadFile(*tokenFile)
	if err != nil {
		return fmt.Errorf("-token-file: %w", err)
	}
	o.token = strings.TrimSpace(string(tok))
	if o.machines, err = readMachines(*machinesFile); err != nil {
		return err
	}
	if o.sample, err = os.ReadFile(*sampleFile); err != nil {
		return fmt.Errorf("-sample: %w", err)
	}
	w := bufio.NewWriterSize(stdout, 64<<10)
	err = generate(w, o)
	if ferr := w.Flush(); err == nil {
		err = ferr
	}
	if errors.Is(err, syscall.EPIPE) {
		return nil // the load tool finished; that is the normal end
	}
	return err
}

func readMachines(path string) ([]machine, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("-machines: %w", err)
	}
	var doc struct {
		Value []machine `json:"value"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("-machines %s: %w", path, err)
	}
	if len(doc.Value) == 0 {
		return nil, fmt.Errorf("-machines %s: value: no machines", path)
	}
	return doc.Value, nil
}

// Placeholders put into the template; none can occur in real JSON text
// because they contain a NUL, which json.Marshal escapes elsewhere.
const (
	phID  = "\x00id\x00"
	phSev = "\x00sev\x00"
	phMID = "\x00mid\x00"
	phDNS = "\x00dns\x00"
)

// template splits the sample alert around the four fields that vary, so
// that each request costs a few appends instead of a JSON encode.
type template struct {
	parts [5][]byte // text before id, severity, machineId, computerDnsName, and the rest
}

func newTemplate(sample []byte) (*template, error) {
	var m map[string]any
	if err := json.Unmarshal(sample, &m); err != nil {
		return nil, fmt.Errorf("sample: %w", err)
	}
	m["id"], m["severity"], m["machineId"], m["computerDnsName"] = phID, phSev, phMID, phDNS
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("sample: %w", err)
	}
	// json.Marshal writes NUL as \u0000; map keys are sorted, so the order
	// of the placeholders in the text is fixed: computerDnsName, id,
	// machineId, severity.
	esc := func(p string) string { return strings.ReplaceAll(p, "\x00", `\u0000`) }
	s := string(b)
	t := &template{}
	for i, ph := range []string{phDNS, phID, phMID, phSev} {
		before, after, ok := strings.Cut(s, `"`+esc(ph)+`"`)
		if !ok {
			return nil, fmt.Errorf("sample: placeholder %d not found after encoding", i)
		}
		t.parts[i] = []byte(before)
		s = after
	}
	t.parts[4] = []byte(s)
	return t, nil
}

func (t *template) render(dst []byte, id, sev string, m machine) []byte {
	for i, v := range []string{m.ComputerDNSName, id, m.ID, sev} {
		dst = append(dst, t.parts[i]...)
		dst = strconv.AppendQuote(dst, v)
	}
	return append(dst, t.parts[4]...)
}

// generate writes one vegeta JSON target per line.
func generate(w io.Writer, o genOptions) error {
	t, err := newTemplate(o.sample)
	if err != nil {
		return err
	}
	if o.devices < 1 || o.devices > len(o.machines) {
		return fmt.Errorf("-devices: %d is outside 1..%d (the inventory)", o.devices, len(o.machines))
	}
	if o.lowEvery < 0 {
		return fmt.Errorf("-low-every: %d is negative", o.lowEvery)
	}
	header, err := json.Marshal(map[string][]string{
		"Authorization": {"Bearer " + o.token},
		"Content-Type":  {"application/json"},
	})
	if err != nil {
		return err
	}
	urlJSON, err := json.Marshal(o.url)
	if err != nil {
		return err
	}
	head := []byte(`{"method":"POST","url":` + string(urlJSON) + `,"header":` + string(header) + `,"body":"`)
	rng := rand.New(rand.NewPCG(o.seed, 0x5ca7))
	var body, line []byte
	for i := int64(1); o.count == 0 || i <= o.count; i++ {
		sev := "High"
		if o.lowEvery > 0 && i%int64(o.lowEvery) == 0 {
			sev = "Low"
		}
		m := o.machines[rng.IntN(o.devices)]
		body = t.render(body[:0], o.run+"-"+strconv.FormatInt(i, 10), sev, m)
		line = append(line[:0], head...)
		line = base64.StdEncoding.AppendEncode(line, body)
		line = append(line, "\"}\n"...)
		if _, err := w.Write(line); err != nil {
			return err
		}
	}
	return nil
}

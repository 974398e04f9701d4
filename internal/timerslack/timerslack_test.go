package timerslack

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// helperEnv makes the test binary act as a program that calls Raise with
// the duration it holds (TestHelperProcess).
const helperEnv = "TIMERSLACK_TEST_WANT"

// TestHelperProcess is the program the tests below run: it prints its PID
// and slack, calls Raise, and prints them again with every thread's slack.
func TestHelperProcess(t *testing.T) {
	s := os.Getenv(helperEnv)
	if s == "" {
		t.Skip("helper process for TestRaise")
	}
	want, err := time.ParseDuration(s)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	slack, err := Current()
	fmt.Println("start", os.Getpid(), int64(slack), err)
	slack, err = Raise(want)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	now, err := Current()
	if now != slack {
		fmt.Println("error: Raise returned", slack, "but the slack is", now)
		os.Exit(1)
	}
	fmt.Println("raised", os.Getpid(), int64(slack), err)
	// Every thread: sysmon and the others the runtime started before main
	// are what the re-execution is for.
	// (Linux shows a thread's slack at /proc/TID, not under task/, and to
	// another thread only with CAP_SYS_NICE.)
	tasks, _ := filepath.Glob("/proc/self/task/*")
	for _, task := range tasks {
		b, err := os.ReadFile(filepath.Join("/proc", filepath.Base(task), "timerslack_ns"))
		if err != nil {
			fmt.Println("thread-unreadable", err)
			continue
		}
		fmt.Println("thread", strings.TrimSpace(string(b)))
	}
	os.Exit(0)
}

func TestRaise(t *testing.T) {
	if !Supported {
		t.Skip("no timer slack on this system")
	}
	def, err := Current()
	if err != nil {
		t.Fatal(err)
	}
	if def <= 0 {
		t.Fatalf("Current() = %v, want a positive slack", def)
	}
	for _, tc := range []struct {
		name   string
		want   time.Duration
		starts int // 2: the program ran again
	}{
		{"above the default: executes again once", def + 2*time.Millisecond, 2},
		{"at or below the slack already: nothing to do", def, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
			cmd.Env = append(os.Environ(), helperEnv+"="+tc.want.String())
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("helper: %v\n%s%s", err, out, stderr.Bytes())
			}
			var starts, raised, threads, unreadable int
			var pids []string
			sc := bufio.NewScanner(bytes.NewReader(out))
			for sc.Scan() {
				f := strings.Fields(sc.Text())
				if len(f) == 0 {
					continue
				}
				switch f[0] {
				case "start", "raised":
					if len(f) != 4 || f[3] != "<nil>" {
						t.Fatalf("helper line %q", sc.Text())
					}
					pids = append(pids, f[1])
					slack, _ := strconv.ParseInt(f[2], 10, 64)
					if f[0] == "start" {
						starts++
						if starts == 1 && time.Duration(slack) != def {
							t.Errorf("the helper started with a slack of %v, want the default %v", time.Duration(slack), def)
						}
						continue
					}
					raised++
					if time.Duration(slack) < tc.want {
						t.Errorf("slack after Raise(%v) = %v", tc.want, time.Duration(slack))
					}
				case "thread-unreadable":
					unreadable++
				case "thread":
					threads++
					slack, _ := strconv.ParseInt(f[1], 10, 64)
					if time.Duration(slack) < tc.want {
						t.Errorf("a thread has a slack of %v after Raise(%v)", time.Duration(slack), tc.want)
					}
				case "error", "error:":
					t.Fatalf("helper: %s", sc.Text())
				}
			}
			if starts != tc.starts || raised != 1 {
				t.Fatalf("the helper started %d times and returned from Raise %d times, want %d and 1:\n%s", starts, raised, tc.starts, out)
			}
			switch {
			case threads == 0 && unreadable > 0:
				t.Logf("the threads' slack is not readable here (no CAP_SYS_NICE); checked the main thread's only")
			case threads < 2:
				t.Errorf("the helper listed %d threads, want the runtime's several:\n%s", threads, out)
			}
			for _, p := range pids {
				if p != pids[0] {
					t.Errorf("PIDs %v: executing again must keep the process", pids)
				}
			}
		})
	}
}

func TestRaiseRefusesNonPositive(t *testing.T) {
	for _, d := range []time.Duration{0, -time.Millisecond} {
		if _, err := Raise(d); err == nil {
			t.Errorf("Raise(%v) = nil, want an error", d)
		}
	}
}

//go:build linux

package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestMeasureTouchesEveryPage(t *testing.T) {
	r, err := measure(4 << 20)
	if err != nil {
		t.Fatal(err)
	}
	if r.demandFault <= 0 || r.secondTouch <= 0 || r.syscall <= 0 {
		t.Fatalf("every step takes some time: %+v", r)
	}
	// A page already mapped is written without entering the kernel: far
	// cheaper than the fault that mapped it, on any machine.
	if r.secondTouch >= r.demandFault {
		t.Errorf("second write %v, first %v: want the second cheaper", r.secondTouch, r.demandFault)
	}
}

func TestHugePageMapping(t *testing.T) {
	r, err := measure(4 << 20)
	if err != nil {
		t.Fatal(err)
	}
	huge, kib, err := measureHuge(4 << 20)
	if err != nil {
		t.Fatal(err)
	}
	if huge == 0 {
		t.Skip("this kernel has no transparent huge pages")
	}
	if kib == 0 {
		t.Skipf("transparent huge pages are %s here: the mapping got 4 KiB pages", thpMode())
	}
	// One fault maps 512 pages, and the kernel zeroes them in one go:
	// cheaper per 4 KiB than a fault for each, on any machine.
	if again, _, err := measureHuge(4 << 20); err != nil || again >= r.demandFault {
		t.Errorf("huge-page mapping %v per 4 KiB (err %v), 4 KiB demand fault %v: want it cheaper", again, err, r.demandFault)
	}
}

func TestRunReportsAndRejectsBadSizes(t *testing.T) {
	var out bytes.Buffer
	if err := run([]string{"-mib", "2"}, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"2 MiB each step", "first write (demand fault)", "second write", "MADV_POPULATE_WRITE", "MADV_HUGEPAGE"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	for _, bad := range []string{"0", "-3", "5000"} {
		if err := run([]string{"-mib", bad}, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "want 1..4096") {
			t.Errorf("-mib %s: err %v, want a range error", bad, err)
		}
	}
}

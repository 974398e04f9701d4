//go:build linux

// Command pagecost measures what it costs a process to touch memory for the
// first time on this machine, the cost that dominates the first second of a
// fresh scanhook under load (README, "What the first second costs"):
//
//	go run ./scripts/pagecost            # 64 MiB of anonymous memory
//	go run ./scripts/pagecost -mib 256
//
// It prints, per 4 KiB page: a write to a page never touched (a demand
// fault), a second write to it, a system call for scale,
// madvise(MADV_POPULATE_WRITE) of a fresh mapping, the first write to a
// page populated that way, and the first write to two MADV_HUGEPAGE mappings
// in turn. On a VM whose hypervisor charges for each page a guest process
// touches, the populated page stays expensive although the kernel has
// already mapped it; and the huge-page rows tell the cost of a fault (paid
// once per 2 MiB there) from the cost of memory the guest has not used
// before (the first mapping pays it, the second reuses what the first gave
// back).
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

// madvPopulateWrite is MADV_POPULATE_WRITE (Linux 5.14), which the syscall
// package does not name.
const madvPopulateWrite = 23

// madvHugepage is MADV_HUGEPAGE: with transparent huge pages in "madvise"
// mode, a fault in such a mapping maps a whole 2 MiB page at once.
const madvHugepage = 14

const hugePageSize = 2 << 20

const pageSize = 4096

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "pagecost:", err)
		os.Exit(1)
	}
}

// result is the cost per page of each step; populate and afterPopulate are
// zero when the kernel lacks MADV_POPULATE_WRITE. huge and hugeAgain are
// the first writes to two MADV_HUGEPAGE mappings, one after the other
// (the second gets memory the kernel has just had back), per 4 KiB page;
// hugeKiB is the process's AnonHugePages while the first is mapped, which
// it is nearly all of (0: transparent huge pages are off, and the step
// measured 4 KiB faults). huge is zero when the kernel has no transparent
// huge pages at all.
type result struct {
	demandFault, secondTouch, syscall, populate, afterPopulate time.Duration
	huge, hugeAgain                                            time.Duration
	hugeKiB                                                    int
}

func run(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("pagecost", flag.ContinueOnError)
	fs.SetOutput(out)
	mib := fs.Int("mib", 64, "MiB of memory to touch in each step")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *mib < 1 || *mib > 4096 {
		return fmt.Errorf("-mib %d: want 1..4096", *mib)
	}
	r, err := measure(*mib << 20)
	if err != nil {
		return err
	}
	if r.huge, r.hugeKiB, err = measureHuge(*mib << 20); err != nil {
		return err
	}
	if r.hugeAgain, _, err = measureHuge(*mib << 20); err != nil {
		return err
	}
	fmt.Fprintf(out, "per 4 KiB page, %d MiB each step:\n", *mib)
	fmt.Fprintf(out, "  first write (demand fault)          %v\n", r.demandFault)
	fmt.Fprintf(out, "  second write                        %v\n", r.secondTouch)
	fmt.Fprintf(out, "  a system call (getppid), for scale  %v\n", r.syscall)
	if r.populate == 0 {
		fmt.Fprintln(out, "  MADV_POPULATE_WRITE                 not supported by this kernel")
	} else {
		fmt.Fprintf(out, "  MADV_POPULATE_WRITE                 %v\n", r.populate)
		fmt.Fprintf(out, "  first write after it                %v\n", r.afterPopulate)
	}
	if r.huge == 0 {
		fmt.Fprintln(out, "  MADV_HUGEPAGE                       not supported by this kernel")
		return nil
	}
	fmt.Fprintf(out, "  first write, MADV_HUGEPAGE mapping  %v (%d KiB in huge pages, transparent huge pages: %s)\n",
		r.huge, r.hugeKiB, thpMode())
	fmt.Fprintf(out, "  the same, a second mapping          %v\n", r.hugeAgain)
	return nil
}

// thpMode is the kernel's transparent huge page setting, e.g. "madvise".
func thpMode() string {
	b, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled")
	if err != nil {
		return "unknown"
	}
	s := string(b)
	if i := strings.IndexByte(s, '['); i >= 0 {
		if j := strings.IndexByte(s[i:], ']'); j > 0 {
			return s[i+1 : i+j]
		}
	}
	return strings.TrimSpace(s)
}

func measure(n int) (result, error) {
	var r result
	pages := time.Duration(n / pageSize)
	a, err := mmap(n)
	if err != nil {
		return r, err
	}
	defer syscall.Munmap(a)
	r.demandFault = touch(a) / pages
	r.secondTouch = touch(a) / pages

	const calls = 100000
	t := time.Now()
	for range calls {
		syscall.Getppid()
	}
	r.syscall = time.Since(t) / calls

	b, err := mmap(n)
	if err != nil {
		return r, err
	}
	defer syscall.Munmap(b)
	t = time.Now()
	_, _, errno := syscall.Syscall(syscall.SYS_MADVISE, uintptr(unsafe.Pointer(&b[0])), uintptr(n), madvPopulateWrite)
	switch {
	case errors.Is(errno, syscall.EINVAL):
		return r, nil
	case errno != 0:
		return r, fmt.Errorf("madvise(MADV_POPULATE_WRITE): %w", errno)
	}
	r.populate = time.Since(t) / pages
	r.afterPopulate = touch(b) / pages
	return r, nil
}

// measureHuge writes every 4 KiB page of a 2 MiB-aligned MADV_HUGEPAGE
// mapping of n bytes and returns the time per page and the process's
// AnonHugePages meanwhile; a zero time when the kernel has no transparent
// huge pages (madvise says EINVAL).
func measureHuge(n int) (time.Duration, int, error) {
	m, err := mmap(n + hugePageSize)
	if err != nil {
		return 0, 0, err
	}
	defer syscall.Munmap(m)
	off := (hugePageSize - int(uintptr(unsafe.Pointer(&m[0]))%hugePageSize)) % hugePageSize
	b := m[off : off+n]
	switch _, _, errno := syscall.Syscall(syscall.SYS_MADVISE, uintptr(unsafe.Pointer(&b[0])), uintptr(n), madvHugepage); {
	case errors.Is(errno, syscall.EINVAL):
		return 0, 0, nil
	case errno != 0:
		return 0, 0, fmt.Errorf("madvise(MADV_HUGEPAGE): %w", errno)
	}
	d := touch(b) / time.Duration(n/pageSize)
	return d, anonHugeKiB(), nil
}

// anonHugeKiB is the process's AnonHugePages (0 when unknown).
func anonHugeKiB() int {
	b, err := os.ReadFile("/proc/self/smaps_rollup")
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "AnonHugePages:"); ok {
			kib, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			return kib
		}
	}
	return 0
}

func mmap(n int) ([]byte, error) {
	b, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return nil, fmt.Errorf("mmap %d bytes: %w", n, err)
	}
	return b, nil
}

// touch writes one byte of every page of b and returns how long it took.
func touch(b []byte) time.Duration {
	t := time.Now()
	for i := 0; i < len(b); i += pageSize {
		b[i]++
	}
	return time.Since(t)
}

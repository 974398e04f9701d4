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
// madvise(MADV_POPULATE_WRITE) of a fresh mapping, and the first write to a
// page populated that way. On a VM whose hypervisor charges for each page a
// guest process touches, the last one stays expensive although the kernel has
// already mapped the page.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"
	"unsafe"
)

// madvPopulateWrite is MADV_POPULATE_WRITE (Linux 5.14), which the syscall
// package does not name.
const madvPopulateWrite = 23

const pageSize = 4096

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "pagecost:", err)
		os.Exit(1)
	}
}

// result is the cost per page of each step; populate and afterPopulate are
// zero when the kernel lacks MADV_POPULATE_WRITE.
type result struct {
	demandFault, secondTouch, syscall, populate, afterPopulate time.Duration
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
	fmt.Fprintf(out, "per 4 KiB page, %d MiB each step:\n", *mib)
	fmt.Fprintf(out, "  first write (demand fault)          %v\n", r.demandFault)
	fmt.Fprintf(out, "  second write                        %v\n", r.secondTouch)
	fmt.Fprintf(out, "  a system call (getppid), for scale  %v\n", r.syscall)
	if r.populate == 0 {
		fmt.Fprintln(out, "  MADV_POPULATE_WRITE                 not supported by this kernel")
		return nil
	}
	fmt.Fprintf(out, "  MADV_POPULATE_WRITE                 %v\n", r.populate)
	fmt.Fprintf(out, "  first write after it                %v\n", r.afterPopulate)
	return nil
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

package qcow2_test

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"vdisk/block"
)

const (
	crashBlock   = 4096
	crashSize    = 8 << 20  // at creation
	crashMaxSize = 24 << 20 // the writer grows the image up to this
)

// crashPattern is the content of the write with sequence number seq: each
// 512-byte sector of it names the write and its own offset, so a reader
// can tell which write every sector holds. (A write that spans several
// host clusters is several pwrites, so an unacknowledged one may be found
// torn at sector granularity after a kill; acknowledged ones never.)
func crashPattern(seq uint64, off int64) []byte {
	b := make([]byte, crashBlock)
	r := rand.New(rand.NewSource(int64(seq)))
	r.Read(b)
	for i := 0; i < crashBlock; i += crashSector {
		binary.BigEndian.PutUint64(b[i:], seq)
		binary.BigEndian.PutUint64(b[i+8:], uint64(off)+uint64(i))
	}
	return b
}

const crashSector = 512

// TestCrashWriter is the child process of TestCrash: it writes until it is
// killed, logging the writes each completed flush acknowledged.
func TestCrashWriter(t *testing.T) {
	name := os.Getenv("QCOW2_CRASH_IMAGE")
	if name == "" {
		return // only runs as TestCrash's child
	}
	seed, _ := strconv.ParseInt(os.Getenv("QCOW2_CRASH_SEED"), 10, 64)
	seq, _ := strconv.ParseUint(os.Getenv("QCOW2_CRASH_SEQ"), 10, 64)
	logf, err := os.OpenFile(name+".log", os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	img, err := block.Open(name, block.OpenOptions{Format: "qcow2"})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println("READY")
	r := rand.New(rand.NewSource(seed))
	var pending []string
	for {
		size := img.Size()
		n := 1 + r.Intn(4)
		off := r.Int63n(size/crashBlock-int64(n)) * crashBlock
		var buf []byte
		for i := 0; i < n; i++ {
			seq++
			buf = append(buf, crashPattern(seq, off+int64(i)*crashBlock)...)
			pending = append(pending, fmt.Sprintf("%d %d", off+int64(i)*crashBlock, seq))
		}
		if _, err := img.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
		switch r.Intn(10) {
		case 0, 1:
			if err := img.Discard(r.Int63n(size/65536)*65536, 65536); err != nil {
				t.Fatal(err)
			}
		case 2:
			// Whole clusters become zero clusters (or unallocated), the
			// partial ones at the ends get zero bytes.
			off, n := r.Int63n(size/crashBlock-32)*crashBlock, int64(1+r.Intn(32))*crashBlock
			if err := img.WriteZeroes(off, n, block.ZeroFlags(r.Intn(2))*block.ZeroMayUnmap); err != nil {
				t.Fatal(err)
			}
		case 3:
			// Growing moves the L1 table once it needs more clusters.
			if size < crashMaxSize {
				if err := img.(block.Resizer).Resize(size+1<<20, false); err != nil {
					t.Fatal(err)
				}
			}
		}
		// Discarded and zeroed blocks read as zeros: verifyCrash accepts
		// zeros for any block.
		if r.Intn(8) == 0 {
			if err := img.Flush(); err != nil {
				t.Fatal(err)
			}
			fmt.Fprintln(logf, strings.Join(pending, "\n"))
			logf.Sync()
			pending = pending[:0]
		}
	}
}

func TestCrash(t *testing.T) {
	for _, opts := range []string{
		"cluster_size=64k", "cluster_size=4k,lazy_refcounts=on",
		// Small clusters and wide refcounts: the L1 table moves as the
		// image grows, and the refcount table soon after.
		"cluster_size=512,refcount_bits=64",
		// Writes copy the rest of their cluster from the backing file.
		"cluster_size=64k,backing_file=base.raw,backing_fmt=raw",
	} {
		t.Run(opts, func(t *testing.T) { crashRun(t, opts, 10) })
	}
}

func crashRun(t *testing.T, opts string, kills int) {
	dir := t.TempDir()
	name := filepath.Join(dir, "crash.qcow2")
	if strings.Contains(opts, "backing_file") {
		base := filepath.Join(dir, "base.raw")
		if err := os.WriteFile(base, bytes.Repeat([]byte{0xb5}, crashSize), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	vdiskCreate(t, name, opts, crashSize)
	var l1, rt int64 // where the L1 and refcount tables start out
	readTables := func() {
		h := make([]byte, 56)
		if f, err := os.Open(name); err == nil {
			f.ReadAt(h, 0)
			f.Close()
		}
		l1, rt = int64(binary.BigEndian.Uint64(h[40:])), int64(binary.BigEndian.Uint64(h[48:]))
	}
	readTables()
	l1Start, rtStart := l1, rt
	r := rand.New(rand.NewSource(42))
	seq := uint64(0)
	for k := 0; k < kills; k++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashWriter$", "-test.count=1")
		cmd.Env = append(os.Environ(), "QCOW2_CRASH_IMAGE="+name,
			fmt.Sprintf("QCOW2_CRASH_SEED=%d", k), fmt.Sprintf("QCOW2_CRASH_SEQ=%d", seq))
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Kill at a random moment after the writer has the image open
		// (start-up time varies a lot, e.g. under -race).
		ready := make(chan struct{})
		done := make(chan struct{})
		var outBuf bytes.Buffer
		go func() {
			defer close(done)
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				if sc.Text() == "READY" {
					close(ready)
					break
				}
				outBuf.WriteString(sc.Text() + "\n")
			}
			io.Copy(&outBuf, stdout)
		}()
		select {
		case <-ready:
		case <-time.After(30 * time.Second):
		}
		time.Sleep(time.Duration(50+r.Intn(250)) * time.Millisecond)
		cmd.Process.Kill()
		<-done
		cmd.Wait()
		if out := outBuf.String() + stderr.String(); strings.Contains(out, "FAIL") {
			t.Fatalf("writer failed:\n%s", out)
		}
		seq += 1 << 32 // sequence numbers of each run stay apart

		if !strings.Contains(opts, "lazy") {
			// No corruption ever; leaks are allowed.
			out, _ := exec.Command("qemu-img", "check", name).CombinedOutput()
			if strings.Contains(string(out), "ERROR") || strings.Contains(string(out), "corrupt") {
				t.Fatalf("after kill %d: qemu-img check:\n%s", k, out)
			}
		} else {
			// A dirty lazy-refcounts image is repaired by a writable open.
			img, err := block.Open(name, block.OpenOptions{Format: "qcow2"})
			if err != nil {
				t.Fatalf("after kill %d: reopen: %v", k, err)
			}
			img.Close()
			qemuCheck(t, name)
		}
		verifyCrash(t, name, k)
	}
	if fi, err := os.Stat(name + ".log"); err != nil || fi.Size() == 0 {
		t.Fatal("the writer never completed a flush: the test checked nothing")
	}
	if strings.Contains(opts, "512") {
		// The kills must have fallen on images whose tables moved.
		if readTables(); l1 == l1Start || rt == rtStart {
			t.Errorf("the L1 table (%#x, was %#x) or the refcount table (%#x, was %#x) never moved", l1, l1Start, rt, rtStart)
		}
	}
	// A final repair leaves a clean image.
	img, err := block.Open(name, block.OpenOptions{Format: "qcow2"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := img.(block.Checker).Check(block.RepairAll); err != nil {
		t.Fatal(err)
	}
	img.Close()
	qemuCheck(t, name)
}

// verifyCrash checks that every block whose latest write a flush
// acknowledged holds that write or a later one, intact.
func verifyCrash(t *testing.T, name string, k int) {
	f, err := os.Open(name + ".log")
	if err != nil {
		if os.IsNotExist(err) {
			return
		}
		t.Fatal(err)
	}
	defer f.Close()
	acked := map[int64]uint64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var off int64
		var seq uint64
		if _, err := fmt.Sscanf(sc.Text(), "%d %d", &off, &seq); err == nil {
			acked[off] = seq
		}
	}
	img, err := block.Open(name, block.OpenOptions{Format: "qcow2", ReadOnly: true})
	if err != nil {
		t.Fatalf("after kill %d: open: %v", k, err)
	}
	defer img.Close()
	buf := make([]byte, crashBlock)
	for off, seq := range acked {
		if _, err := img.ReadAt(buf, off); err != nil {
			t.Fatalf("after kill %d: read %d: %v", k, off, err)
		}
		// Each sector holds the acknowledged write or a later one, whole,
		// or zeros (discarded or zeroed afterwards; those are not tracked).
		for i := 0; i < crashBlock; i += crashSector {
			sec := buf[i : i+crashSector]
			if block.IsZero(sec) {
				continue
			}
			got := binary.BigEndian.Uint64(sec)
			if got < seq || binary.BigEndian.Uint64(sec[8:]) != uint64(off)+uint64(i) || !bytes.Equal(sec, crashPattern(got, off)[i:i+crashSector]) {
				t.Fatalf("after kill %d: sector at %d holds write %d, acknowledged write was %d", k, off+int64(i), got, seq)
			}
		}
	}
}

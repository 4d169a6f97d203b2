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
	"sync"
	"sync/atomic"
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

// The writer's goroutines own disjoint sets of blocks: chunk i of the
// image belongs to goroutine i % crashWriters, so the order of the
// operations on each block is that of one goroutine, which the log keeps.
const (
	crashWriters = 4
	crashChunk   = 256 << 10
)

// crashLog is the writer's log, shared by its goroutines. Lines:
//
//	iz OFF SEQ  a zeroing (discard or write-zeroes) of the block at OFF is
//	            about to be issued; written before it is, so that whatever
//	            the kill leaves on disk has its line
//	w OFF SEQ   the write SEQ of the block at OFF was acknowledged by a flush
//	z OFF SEQ   the zeroing SEQ of the block at OFF was acknowledged
type crashLog struct {
	mu sync.Mutex
	f  *os.File
}

func (l *crashLog) add(lines []string) error {
	if len(lines) == 0 {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	_, err := l.f.WriteString(strings.Join(lines, "\n") + "\n")
	return err
}

// TestCrashWriter is the child process of TestCrash: its goroutines write,
// zero and discard blocks of their own until it is killed, each logging
// the operations its own completed flushes acknowledged.
func TestCrashWriter(t *testing.T) {
	name := os.Getenv("QCOW2_CRASH_IMAGE")
	if name == "" {
		return // only runs as TestCrash's child
	}
	seed, _ := strconv.ParseInt(os.Getenv("QCOW2_CRASH_SEED"), 10, 64)
	seq0, _ := strconv.ParseUint(os.Getenv("QCOW2_CRASH_SEQ"), 10, 64)
	logf, err := os.OpenFile(name+".log", os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	log := &crashLog{f: logf}
	img, err := block.Open(name, block.OpenOptions{Format: "qcow2"})
	if err != nil {
		t.Fatal(err)
	}
	var seq atomic.Uint64
	seq.Store(seq0)
	fmt.Println("READY")
	for g := 0; g < crashWriters; g++ {
		go func() {
			err := crashWrite(img, log, &seq, rand.New(rand.NewSource(seed*crashWriters+int64(g))), g)
			// Reported at once, for the parent to see: the test would
			// report it only when it ends, and the parent kills it first.
			fmt.Printf("FAIL: writer %d: %v\n", g, err)
			os.Exit(1)
		}()
	}
	select {} // until the parent kills the process
}

// crashWrite is one goroutine of the writer, working on the chunks of
// goroutine g.
func crashWrite(img block.Image, log *crashLog, seq *atomic.Uint64, r *rand.Rand, g int) error {
	var done []string // completed, not yet acknowledged
	for {
		size := img.Size()
		chunks := size / crashChunk
		base := (int64(g) + crashWriters*r.Int63n((chunks-int64(g)+crashWriters-1)/crashWriters)) * crashChunk
		const blocks = crashChunk / crashBlock
		n := 1 + r.Int63n(4)
		off := base + r.Int63n(blocks-n+1)*crashBlock
		var buf []byte
		for i := int64(0); i < n; i++ {
			s := seq.Add(1)
			buf = append(buf, crashPattern(s, off+i*crashBlock)...)
			done = append(done, fmt.Sprintf("w %d %d", off+i*crashBlock, s))
		}
		if _, err := img.WriteAt(buf, off); err != nil {
			return err
		}
		var zoff, zn int64
		discard := false
		switch r.Intn(10) {
		case 0, 1:
			// Whole clusters, whatever their size: they are unmapped,
			// or become zero clusters where the backing file shows.
			zoff, zn = base+r.Int63n(crashChunk/65536)*65536, 65536
			discard = r.Intn(2) == 0
		case 2:
			// Whole clusters become zero clusters (or unallocated), the
			// partial ones at the ends get zero bytes.
			zn = (1 + r.Int63n(32)) * crashBlock
			zoff = base + r.Int63n(blocks-zn/crashBlock+1)*crashBlock
		case 3:
			// Growing moves the L1 table once it needs more clusters.
			if g == 0 && size < crashMaxSize {
				if err := img.(block.Resizer).Resize(size+1<<20, false); err != nil {
					return err
				}
			}
		}
		if zn > 0 {
			s := seq.Add(1)
			var issued []string
			for b := zoff; b < zoff+zn; b += crashBlock {
				issued = append(issued, fmt.Sprintf("iz %d %d", b, s))
				done = append(done, fmt.Sprintf("z %d %d", b, s))
			}
			if err := log.add(issued); err != nil {
				return err
			}
			var err error
			if discard {
				err = img.Discard(zoff, zn)
			} else {
				err = img.WriteZeroes(zoff, zn, block.ZeroFlags(r.Intn(2))*block.ZeroMayUnmap)
			}
			if err != nil {
				return err
			}
		}
		if r.Intn(8) == 0 {
			if err := img.Flush(); err != nil {
				return err
			}
			if err := log.add(done); err != nil {
				return err
			}
			done = done[:0]
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
	checked := 0
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
		checked += verifyCrash(t, name, k)
	}
	if checked == 0 {
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

// verifyCrash checks every block with an acknowledged operation, sector
// by sector. After an acknowledged write, a sector holds that write or a
// later one, whole, or zeros if a zeroing of the block was issued after
// it. After an acknowledged zeroing, it holds zeros or a later write.
func verifyCrash(t *testing.T, name string, k int) (checked int) {
	f, err := os.Open(name + ".log")
	if err != nil {
		if os.IsNotExist(err) {
			return 0
		}
		t.Fatal(err)
	}
	defer f.Close()
	type state struct {
		seq      uint64 // the last acknowledged operation
		zero     bool   // it was a zeroing
		lastZero uint64 // the last zeroing issued
	}
	blocks := map[int64]*state{}
	get := func(off int64) *state {
		if blocks[off] == nil {
			blocks[off] = &state{}
		}
		return blocks[off]
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var op string
		var off int64
		var seq uint64
		if _, err := fmt.Sscanf(sc.Text(), "%s %d %d", &op, &off, &seq); err != nil {
			continue // a line the kill cut short
		}
		switch b := get(off); op {
		case "w", "z":
			// A goroutine acknowledges its operations in order.
			if seq > b.seq {
				b.seq, b.zero = seq, op == "z"
			}
		case "iz":
			b.lastZero = max(b.lastZero, seq)
		}
	}
	img, err := block.Open(name, block.OpenOptions{Format: "qcow2", ReadOnly: true})
	if err != nil {
		t.Fatalf("after kill %d: open: %v", k, err)
	}
	defer img.Close()
	buf := make([]byte, crashBlock)
	for off, b := range blocks {
		if b.seq == 0 {
			continue // only issued zeroings: nothing was promised
		}
		checked++
		if _, err := img.ReadAt(buf, off); err != nil {
			t.Fatalf("after kill %d: read %d: %v", k, off, err)
		}
		for i := 0; i < crashBlock; i += crashSector {
			sec := buf[i : i+crashSector]
			if block.IsZero(sec) {
				if b.zero || b.lastZero > b.seq {
					continue
				}
				t.Fatalf("after kill %d: sector at %d reads as zeros; acknowledged write %d, and no zeroing was issued after it", k, off+int64(i), b.seq)
			}
			got := binary.BigEndian.Uint64(sec)
			if got < b.seq || binary.BigEndian.Uint64(sec[8:]) != uint64(off)+uint64(i) || !bytes.Equal(sec, crashPattern(got, off)[i:i+crashSector]) {
				what := "write"
				if b.zero {
					what = "zeroing"
				}
				t.Fatalf("after kill %d: sector at %d holds write %d, acknowledged %s was %d", k, off+int64(i), got, what, b.seq)
			}
		}
	}
	return checked
}

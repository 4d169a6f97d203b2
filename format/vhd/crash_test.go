package vhd_test

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"vdisk/block"
)

const crashSize = 4 << 20

// crashLayout places the slots the crash writer fills: n slots of size
// bytes from first on.
type crashLayout struct{ first, size, n int }

var crashLayouts = map[string]crashLayout{
	"aligned": {0, 4096, crashSize / 4096},
	// Slots that start and end inside sectors, so that neighbours share
	// sectors and differencing writes merge with the parent's data.
	"unaligned": {100, 3000, (crashSize - 100) / 3000},
}

func (l crashLayout) off(s int) int64 { return int64(l.first + s*l.size) }

// slotData is what generation gen writes into slot s.
func (l crashLayout) slotData(gen, s int) []byte {
	b := make([]byte, l.size)
	for i := 0; i < l.size; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], uint64(gen)<<40|uint64(s)<<16|uint64(i))
	}
	return b
}

// TestMain doubles as the crash-test writer when run as a child.
func TestMain(m *testing.M) {
	if file := os.Getenv("VHD_CRASH_CHILD"); file != "" {
		gen, _ := strconv.Atoi(os.Getenv("VHD_CRASH_GEN"))
		crashChild(file, gen, crashLayouts[os.Getenv("VHD_CRASH_LAYOUT")])
		return
	}
	os.Exit(m.Run())
}

// crashChild writes slots in a random order, flushing every few writes
// and reporting each flush on stdout, until it is killed.
func crashChild(file string, gen int, l crashLayout) {
	img, err := block.Open(file, block.OpenOptions{})
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(1)
	}
	rng := rand.New(rand.NewSource(int64(gen)))
	order := rng.Perm(l.n)
	out := bufio.NewWriter(os.Stdout)
	for i, s := range order {
		if _, err := img.WriteAt(l.slotData(gen, s), l.off(s)); err != nil {
			fmt.Println("write:", err)
			os.Exit(1)
		}
		if i%4 == 3 {
			if err := img.Flush(); err != nil {
				fmt.Println("flush:", err)
				os.Exit(1)
			}
			fmt.Fprintf(out, "flushed %d\n", i)
			out.Flush()
		}
	}
	img.Close()
	fmt.Fprintln(out, "done")
	out.Flush()
}

// TestCrash kills a writer of a dynamic disk with SIGKILL at random
// moments, then checks that vdisk and qemu-img open the image, read the
// same bytes, and every flushed write is there.
func TestCrash(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "crash.vhd")
	create(t, file, map[string]string{"size": "4M", "block_size": "64K", "force_size": "on"})
	crashTest(t, file, "aligned", make([]byte, crashSize), true)
}

// TestCrashDifferencing does the same to a differencing disk over a parent
// full of data, with writes that start and end inside sectors, so that
// killed writes meet half-marked bitmaps and sectors merged with the
// parent's bytes. qemu-img reads such a disk without its parent, so it
// only has to open and read it.
func TestCrashDifferencing(t *testing.T) {
	dir := t.TempDir()
	parent, file := filepath.Join(dir, "parent.vhd"), filepath.Join(dir, "crash.vhd")
	create(t, parent, map[string]string{"size": "4M", "block_size": "64K", "force_size": "on"})
	base := make([]byte, crashSize)
	rand.New(rand.NewSource(5)).Read(base)
	img := openRW(t, parent)
	if _, err := img.WriteAt(base, 0); err != nil {
		t.Fatal(err)
	}
	img.Close()
	create(t, file, map[string]string{"backing_file": "parent.vhd"})
	parentHash := fileHash(t, parent)
	crashTest(t, file, "unaligned", base, false)
	if fileHash(t, parent) != parentHash {
		t.Fatal("the crashes changed the parent's file")
	}
}

// crashTest runs the kills on file, whose content is base, with the
// writes of the named layout. qemuSame says qemu-img must read what vdisk
// reads.
func crashTest(t *testing.T, file, layout string, base []byte, qemuSame bool) {
	dir := filepath.Dir(file)
	l := crashLayouts[layout]
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// base holds what the disk held after the last check.
	base = append([]byte(nil), base...)
	rng := rand.New(rand.NewSource(42))
	window := 80 * time.Millisecond
	start := time.Now()
	for gen := 1; gen <= 20; gen++ {
		if gen > 8 && time.Since(start) > 12*time.Second {
			t.Logf("stopping after %d kills to bound the run time", gen-1)
			break
		}
		cmd := exec.Command(self, "-test.run=^$")
		cmd.Env = append(os.Environ(), "VHD_CRASH_CHILD="+file, fmt.Sprintf("VHD_CRASH_GEN=%d", gen), "VHD_CRASH_LAYOUT="+layout)
		stdout, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		flushed := -1
		var doneAt time.Time
		var mu sync.Mutex
		var lines []string
		readDone := make(chan struct{})
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				mu.Lock()
				lines = append(lines, sc.Text())
				if sc.Text() == "done" {
					doneAt = time.Now()
				}
				var n int
				if _, err := fmt.Sscanf(sc.Text(), "flushed %d", &n); err == nil {
					flushed = n
				}
				mu.Unlock()
			}
			close(readDone)
		}()
		// Let the writer get going, then kill it at a random moment.
		for i := 0; i < 500; i++ {
			mu.Lock()
			started := len(lines) > 0
			mu.Unlock()
			if started {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		started := time.Now()
		time.Sleep(time.Duration(rng.Int63n(int64(window))))
		cmd.Process.Kill()
		<-readDone
		cmd.Wait()
		mu.Lock()
		last, got := flushed, lines
		if !doneAt.IsZero() {
			// The writer finished first: kill the next one within the
			// time a whole run takes, so that it dies mid-way.
			window = max(doneAt.Sub(started), time.Millisecond)
		}
		mu.Unlock()
		for _, l := range got {
			if l != "done" && !bytes.HasPrefix([]byte(l), []byte("flushed")) {
				t.Fatalf("gen %d: child said %q", gen, l)
			}
		}
		t.Logf("gen %d: killed after flushed write %d of %d", gen, last, l.n)
		order := rand.New(rand.NewSource(int64(gen))).Perm(l.n)
		pos := make([]int, l.n) // slot -> position in the write order
		for i, sl := range order {
			pos[sl] = i
		}
		// qemu-img must open it and read the same bytes as vdisk.
		raw := filepath.Join(dir, "q.raw")
		run(t, "qemu-img", "convert", "-f", "vpc", "-O", "raw", file, raw)
		qemuBytes, _ := os.ReadFile(raw)
		img, err := block.Open(file, block.OpenOptions{ReadOnly: true})
		if err != nil {
			t.Fatalf("gen %d: open after kill: %v", gen, err)
		}
		if img.ReadOnly() && len(qemuBytes) == 0 {
			t.Fatal("no data")
		}
		data := readAll(t, img)
		img.Close()
		if qemuSame && !bytes.Equal(data, qemuBytes) {
			t.Fatalf("gen %d: vdisk and qemu-img read different bytes", gen)
		}
		if len(qemuBytes) != len(data) {
			t.Fatalf("gen %d: qemu-img read %d bytes of %d", gen, len(qemuBytes), len(data))
		}
		for sl := 0; sl < l.n; sl++ {
			o := int(l.off(sl))
			have := data[o : o+l.size]
			old := base[o : o+l.size]
			nw := l.slotData(gen, sl)
			if pos[sl] <= last {
				if !bytes.Equal(have, nw) {
					t.Fatalf("gen %d: flushed write %d (slot %d) is not intact", gen, pos[sl], sl)
				}
				continue
			}
			// A write that was not flushed may have landed, not landed,
			// or (killed mid-syscall) landed in part: each sector's part
			// of the slot is old or new.
			for i := 0; i < l.size; {
				e := min(l.size, (o+i)/512*512+512-o)
				if !bytes.Equal(have[i:e], old[i:e]) && !bytes.Equal(have[i:e], nw[i:e]) {
					t.Fatalf("gen %d: unflushed slot %d holds neither old nor new data at %d", gen, sl, o+i)
				}
				i = e
			}
		}
		// Bytes outside every slot never change.
		if l.first > 0 && !bytes.Equal(data[:l.first], base[:l.first]) {
			t.Fatalf("gen %d: bytes before the first slot changed", gen)
		}
		if end := l.first + l.n*l.size; !bytes.Equal(data[end:], base[end:]) {
			t.Fatalf("gen %d: bytes after the last slot changed", gen)
		}
		copy(base, data)
		// The image is writable again (not damaged) for the next round.
		img = openRW(t, file)
		if img.ReadOnly() {
			t.Fatalf("gen %d: image damaged after kill", gen)
		}
		img.Close()
	}
	img := openRW(t, file)
	defer img.Close()
	res := check(t, img, block.RepairNone)
	if res.Corruptions != 0 {
		t.Fatalf("corruptions after crashes: %+v %v", res, res.Messages)
	}
	t.Logf("after the kills: %d leaked blocks", res.Leaks)
}

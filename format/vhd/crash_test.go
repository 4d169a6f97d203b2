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

const (
	crashSlot  = 4096
	crashSize  = 4 << 20
	crashSlots = crashSize / crashSlot
)

// slotData is what generation gen writes into slot s.
func slotData(gen, s int) []byte {
	b := make([]byte, crashSlot)
	for i := 0; i < crashSlot; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], uint64(gen)<<40|uint64(s)<<16|uint64(i))
	}
	return b
}

// TestMain doubles as the crash-test writer when run as a child.
func TestMain(m *testing.M) {
	if file := os.Getenv("VHD_CRASH_CHILD"); file != "" {
		gen, _ := strconv.Atoi(os.Getenv("VHD_CRASH_GEN"))
		crashChild(file, gen)
		return
	}
	os.Exit(m.Run())
}

// crashChild writes slots in a random order, flushing every few writes
// and reporting each flush on stdout, until it is killed.
func crashChild(file string, gen int) {
	img, err := block.Open(file, block.OpenOptions{})
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(1)
	}
	rng := rand.New(rand.NewSource(int64(gen)))
	order := rng.Perm(crashSlots)
	out := bufio.NewWriter(os.Stdout)
	for i, s := range order {
		if _, err := img.WriteAt(slotData(gen, s), int64(s)*crashSlot); err != nil {
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

// TestCrash kills a writer with SIGKILL at random moments, then checks
// that vdisk and qemu-img open the image and every flushed write is there.
func TestCrash(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "crash.vhd")
	create(t, file, map[string]string{"size": "4M", "block_size": "64K"})
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// base holds what each slot held after the last check.
	base := make([]byte, crashSize)
	rng := rand.New(rand.NewSource(42))
	start := time.Now()
	for gen := 1; gen <= 20; gen++ {
		if gen > 8 && time.Since(start) > 12*time.Second {
			t.Logf("stopping after %d kills to bound the run time", gen-1)
			break
		}
		cmd := exec.Command(self, "-test.run=^$")
		cmd.Env = append(os.Environ(), "VHD_CRASH_CHILD="+file, fmt.Sprintf("VHD_CRASH_GEN=%d", gen))
		stdout, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		flushed := -1
		var mu sync.Mutex
		var lines []string
		readDone := make(chan struct{})
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				mu.Lock()
				lines = append(lines, sc.Text())
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
		time.Sleep(time.Duration(rng.Intn(80)) * time.Millisecond)
		cmd.Process.Kill()
		<-readDone
		cmd.Wait()
		mu.Lock()
		last, got := flushed, lines
		mu.Unlock()
		for _, l := range got {
			if l != "done" && !bytes.HasPrefix([]byte(l), []byte("flushed")) {
				t.Fatalf("gen %d: child said %q", gen, l)
			}
		}
		t.Logf("gen %d: killed after flushed write %d of %d", gen, last, crashSlots)
		order := rand.New(rand.NewSource(int64(gen))).Perm(crashSlots)
		pos := make([]int, crashSlots) // slot -> position in the write order
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
		if !bytes.Equal(data, qemuBytes) {
			t.Fatalf("gen %d: vdisk and qemu-img read different bytes", gen)
		}
		for sl := 0; sl < crashSlots; sl++ {
			have := data[sl*crashSlot : (sl+1)*crashSlot]
			old := base[sl*crashSlot : (sl+1)*crashSlot]
			nw := slotData(gen, sl)
			if pos[sl] <= last {
				if !bytes.Equal(have, nw) {
					t.Fatalf("gen %d: flushed write %d (slot %d) is not intact", gen, pos[sl], sl)
				}
				continue
			}
			// A write that was not flushed may have landed, not landed,
			// or (killed mid-syscall) landed in part: each sector is old
			// or new.
			for i := 0; i < crashSlot; i += 512 {
				if !bytes.Equal(have[i:i+512], old[i:i+512]) && !bytes.Equal(have[i:i+512], nw[i:i+512]) {
					t.Fatalf("gen %d: unflushed slot %d sector %d holds neither old nor new data", gen, sl, i/512)
				}
			}
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

package qcow2_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"vdisk/block"
)

func poke(t *testing.T, name string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(name, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func be16(v uint16) []byte  { return binary.BigEndian.AppendUint16(nil, v) }
func be64b(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

func checkImage(t *testing.T, name string, mode block.RepairMode) *block.CheckResult {
	t.Helper()
	img, err := block.Open(name, block.OpenOptions{Format: "qcow2", ReadOnly: mode == block.RepairNone})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	res, err := img.(block.Checker).Check(mode)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// A fresh qemu-img image with 64 KiB clusters: header, reftable at 64k,
// refblock at 128k, L1 at 192k; the data write puts an L2 table at 256k and
// data at 320k.
func leakyImage(t *testing.T) string {
	name := filepath.Join(t.TempDir(), "l.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", name, "8M")
	qemuIO(t, name, "qcow2", "write -P 1 0 64k", "write -c -P 2 64k 64k")
	return name
}

func TestCheckLeaksAndRepair(t *testing.T) {
	name := leakyImage(t)
	res := checkImage(t, name, block.RepairNone)
	if res.Leaks != 0 || res.Corruptions != 0 || res.AllocatedClusters != 2 || res.CompressedClusters != 1 || res.TotalClusters != 128 {
		t.Fatalf("clean image: %+v", res)
	}
	// Cluster 9 is past the end of the file: its refcount is not looked
	// at, as in QEMU (the allocator skips it; nothing refers to it).
	poke(t, name, 128<<10+2*9, be16(1))
	res = checkImage(t, name, block.RepairNone)
	if res.Leaks != 0 || res.Corruptions != 0 || res.ImageEndOffset != 7<<16 {
		t.Fatalf("refcount past the end of the file: %+v", res)
	}
	// Inside the file, it is a leak.
	if err := os.Truncate(name, 10<<16); err != nil {
		t.Fatal(err)
	}
	res = checkImage(t, name, block.RepairNone)
	if res.Leaks != 1 || res.Corruptions != 0 {
		t.Fatalf("leak: %+v", res)
	}
	res = checkImage(t, name, block.RepairLeaks)
	if res.Leaks != 0 || res.LeaksFixed != 1 {
		t.Fatalf("leak repair: %+v", res)
	}
	qemuCheck(t, name)
}

func TestCheckCorruptionAndRebuild(t *testing.T) {
	name := leakyImage(t)
	poke(t, name, 128<<10+2*5, be16(0)) // the data cluster's refcount
	res := checkImage(t, name, block.RepairNone)
	if res.Corruptions == 0 {
		t.Fatalf("corruption not found: %+v", res)
	}
	want := qemuRaw(t, name)
	res = checkImage(t, name, block.RepairAll)
	if res.Corruptions != 0 || res.CorruptionsFixed == 0 {
		t.Fatalf("repair: %+v", res)
	}
	qemuCheck(t, name)
	if got := qemuRaw(t, name); string(got) != string(want) {
		t.Fatal("repair changed the content")
	}
}

func TestCheckBadL2Offset(t *testing.T) {
	name := leakyImage(t)
	poke(t, name, 192<<10, be64b(1<<63|(256<<10)+512)) // L1 entry not cluster aligned
	res := checkImage(t, name, block.RepairNone)
	if res.Corruptions == 0 {
		t.Fatalf("misaligned L2 table not reported: %+v", res)
	}
	img, err := block.Open(name, block.OpenOptions{Format: "qcow2", ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if _, err := img.ReadAt(make([]byte, 512), 0); err == nil {
		t.Fatal("read through a misaligned L2 table succeeded")
	}
}

func TestIncompatibleFeatures(t *testing.T) {
	name := leakyImage(t)
	poke(t, name, 72, be64b(1<<9))
	_, err := block.Open(name, block.OpenOptions{Format: "qcow2", ReadOnly: true})
	if err == nil || !strings.Contains(err.Error(), "unknown feature bit 9") {
		t.Fatalf("unknown incompatible feature: %v", err)
	}
	poke(t, name, 72, be64b(1<<2))
	_, err = block.Open(name, block.OpenOptions{Format: "qcow2", ReadOnly: true})
	if err == nil || !strings.Contains(err.Error(), "external data file") {
		t.Fatalf("external data file: %v", err)
	}
	// corrupt: read-only only.
	poke(t, name, 72, be64b(1<<1))
	if _, err = block.Open(name, block.OpenOptions{Format: "qcow2"}); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("writable open of a corrupt image: %v", err)
	}
	img, err := block.Open(name, block.OpenOptions{Format: "qcow2", ReadOnly: true})
	if err != nil {
		t.Fatalf("read-only open of a corrupt image: %v", err)
	}
	img.Close()
}

// The compression type feature bit must be set exactly when the type is
// not zlib; QEMU refuses either mismatch at open, and so do we.
func TestCompressionTypeBitMismatch(t *testing.T) {
	for _, c := range []struct {
		name     string
		inc      uint64
		compType byte
	}{{"bit with zlib", 1 << 3, 0}, {"zstd without bit", 0, 1}} {
		t.Run(c.name, func(t *testing.T) {
			name := leakyImage(t) // qemu-img's header: 112 bytes, type at 104
			poke(t, name, 72, be64b(c.inc))
			poke(t, name, 104, []byte{c.compType})
			if out, err := exec.Command("qemu-img", "info", name).CombinedOutput(); err == nil {
				t.Fatalf("qemu-img accepts the header:\n%s", out)
			}
			_, err := block.Open(name, block.OpenOptions{Format: "qcow2", ReadOnly: true})
			if err == nil || !strings.Contains(err.Error(), "compression type") {
				t.Fatalf("open: %v", err)
			}
		})
	}
}

func TestDirtyRebuild(t *testing.T) {
	name := filepath.Join(t.TempDir(), "d.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", name, "8M")
	qemuIO(t, name, "qcow2", "write -P 1 0 64k")
	// Simulate a crash with lazy refcounts: dirty bit set, refcount of the
	// data cluster never written.
	poke(t, name, 72, be64b(1))
	poke(t, name, 128<<10+2*5, be16(0))
	img, err := block.Open(name, block.OpenOptions{Format: "qcow2", ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	info, _ := img.Info()
	img.Close()
	if !info.Dirty {
		t.Fatal("dirty flag not reported")
	}
	img, err = block.Open(name, block.OpenOptions{Format: "qcow2"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := img.WriteAt(make([]byte, 4096), 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	qemuCheck(t, name)
	qemuIO(t, name, "qcow2", "read -P 1 0 64k")
}

func TestWriteRefusesMetadataOverlap(t *testing.T) {
	name := leakyImage(t)
	// Point the L2 entry of guest cluster 0 at the refcount table.
	poke(t, name, 256<<10, be64b(1<<63|64<<10))
	img, err := block.Open(name, block.OpenOptions{Format: "qcow2"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := img.WriteAt(make([]byte, 512), 0); err == nil || !strings.Contains(err.Error(), "overlaps") {
		t.Fatalf("write over the refcount table: %v", err)
	}
	img.Close()
	// The refused write marked the image corrupt, as QEMU does.
	if _, err := block.Open(name, block.OpenOptions{Format: "qcow2"}); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("read/write open after the overlap: %v", err)
	}
	poke(t, name, 72, be64b(0))
	// Point the L1 entry at the L1 table itself.
	poke(t, name, 192<<10, be64b(1<<63|192<<10))
	img2, err := block.Open(name, block.OpenOptions{Format: "qcow2"})
	if err != nil {
		t.Fatal(err)
	}
	defer img2.Close()
	if _, err := img2.WriteAt(make([]byte, 512), 0); err == nil || !strings.Contains(err.Error(), "overlaps") {
		t.Fatalf("write through an L2 table overlapping L1: %v", err)
	}
}

// truncatedImage has its only L2 table (at 256k) cut short by the end of
// the file, and the 1 MiB of data it maps (from 320k) gone.
func truncatedImage(t *testing.T) string {
	name := filepath.Join(t.TempDir(), "t.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", name, "8M")
	qemuIO(t, name, "qcow2", "write -P 1 0 1M")
	if err := os.Truncate(name, 300<<10); err != nil {
		t.Fatal(err)
	}
	return name
}

// A table the end of the file cuts short is read zero-padded, as qemu-img
// does: what it references is corruption, not leaks, and no repair mode
// touches the file (freeing those clusters would put the next allocation
// under the table's references).
func TestCheckTruncatedL2(t *testing.T) {
	name := truncatedImage(t)
	before, _ := os.ReadFile(name)
	if err := exec.Command("qemu-img", "check", "-q", name).Run(); err == nil {
		t.Fatal("qemu-img check finds the truncated image clean")
	} else if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
		t.Fatalf("qemu-img check: %v", err)
	}
	for _, mode := range []block.RepairMode{block.RepairNone, block.RepairLeaks, block.RepairAll} {
		res := checkImage(t, name, mode)
		if res.Corruptions != 16 || res.Leaks != 0 || res.CheckErrors != 0 || res.ImageEndOffset != 320<<10 {
			t.Fatalf("mode %v: %+v", mode, res)
		}
		for i, m := range res.Messages {
			if want := fmt.Sprintf("ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset %#x size 0x10000", (5+i%16)<<16); m != want {
				t.Fatalf("mode %v: message %d is %q, want %q", mode, i, m, want)
			}
		}
		if after, _ := os.ReadFile(name); !bytes.Equal(after, before) {
			t.Fatalf("mode %v changed the file", mode)
		}
	}
}

// failingFile fails reads of the cluster at one offset, as a bad sector
// would.
type failingFile struct {
	block.File
	bad int64
}

func (f *failingFile) ReadAt(p []byte, off int64) (int, error) {
	if off == f.bad {
		return 0, syscall.EIO
	}
	return f.File.ReadAt(p, off)
}

// A table that cannot be read hides references; its clusters look leaked,
// and a repair would free live data. The check reports the failure and
// repairs nothing, as qemu-img does.
func TestCheckNoRepairAfterReadError(t *testing.T) {
	name := leakyImage(t)
	if err := os.Truncate(name, 10<<16); err != nil {
		t.Fatal(err)
	}
	poke(t, name, 128<<10+2*9, be16(1)) // a real leak too, which must wait
	before, _ := os.ReadFile(name)
	img := openWrapped(t, name, func(f block.File) block.File { return &failingFile{File: f, bad: 256 << 10} })
	for _, mode := range []block.RepairMode{block.RepairLeaks, block.RepairAll} {
		res, err := img.(block.Checker).Check(mode)
		if err == nil && res.CheckErrors == 0 {
			t.Fatalf("mode %v: check of an unreadable L2 table succeeded: %+v", mode, res)
		}
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(name); !bytes.Equal(after, before) {
		t.Fatal("a check that could not read a table changed the image")
	}
	if res := checkImage(t, name, block.RepairNone); res.Leaks != 1 || res.Corruptions != 0 {
		t.Fatalf("after the failed repairs: %+v", res)
	}
}

// An L1 entry naming an L2 table wholly past the end of the file (found
// by fuzzing: the zero-padded read of a cut-short table took a negative
// length) is an error to report, not a crash.
func TestCheckL2PastEnd(t *testing.T) {
	name := leakyImage(t)
	poke(t, name, 192<<10, be64b(1<<63|0x1010101010000))
	res := checkImage(t, name, block.RepairNone)
	if res.Corruptions == 0 {
		t.Fatalf("an L2 table past the end went unreported: %+v %v", res, res.Messages)
	}
}

package imgtool

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"vdisk/block"
	"vdisk/format/mem"
)

// QEMU's JSON key order, taken from qemu-img 7.2 output.
func TestDictOrderMatchesQEMU(t *testing.T) {
	in := &block.Info{
		Filename: "d.qcow2", Format: "qcow2", VirtualSize: 10485760, ActualSize: 200704,
		ClusterSize: 65536, BackingFilename: "c.qcow2", FullBackingFilename: "c.qcow2", BackingFormat: "qcow2",
		FormatSpecific: &block.FormatSpecific{Type: "qcow2", Data: block.OrderedMap{}.
			Add("compat", "1.1").Add("extended-l2", false).Add("lazy-refcounts", false).
			Add("corrupt", false).Add("refcount-bits", 16).Add("compression-type", "zlib")},
	}
	want := `{
    "backing-filename-format": "qcow2",
    "virtual-size": 10485760,
    "filename": "d.qcow2",
    "cluster-size": 65536,
    "format": "qcow2",
    "actual-size": 200704,
    "format-specific": {
        "type": "qcow2",
        "data": {
            "compat": "1.1",
            "compression-type": "zlib",
            "lazy-refcounts": false,
            "refcount-bits": 16,
            "corrupt": false,
            "extended-l2": false
        }
    },
    "full-backing-filename": "c.qcow2",
    "backing-filename": "c.qcow2",
    "dirty-flag": false
}
`
	if got := InfoJSON([]*block.Info{in}, false); got != want {
		t.Errorf("InfoJSON:\n%s\nwant:\n%s", got, want)
	}
	wantHuman := `image: d.qcow2
file format: qcow2
virtual size: 10 MiB (10485760 bytes)
disk size: 196 KiB
cluster_size: 65536
backing file: c.qcow2
backing file format: qcow2
Format specific information:
    compat: 1.1
    compression type: zlib
    lazy refcounts: false
    refcount bits: 16
    corrupt: false
    extended l2: false
`
	if got := InfoHuman([]*block.Info{in}); got != wantHuman {
		t.Errorf("InfoHuman:\n%s\nwant:\n%s", got, wantHuman)
	}
}

func TestInfoJSONChainAndSnapshots(t *testing.T) {
	ic := int64(0)
	top := &block.Info{Filename: "a", Format: "raw", VirtualSize: 512, Snapshots: []block.SnapshotInfo{{ID: "1", Name: "s", ICount: &ic}}}
	got := InfoJSON([]*block.Info{top, {Filename: "b", Format: "raw"}}, true)
	if !strings.HasPrefix(got, "[\n    {\n        \"snapshots\": [\n            {\n                \"icount\": 0,\n                \"vm-clock-nsec\": 0,\n                \"name\": \"s\",") {
		t.Errorf("chain JSON starts wrongly:\n%s", got)
	}
	if !strings.HasSuffix(got, "        \"dirty-flag\": false\n    }\n]\n") {
		t.Errorf("chain JSON ends wrongly:\n%s", got)
	}
	h := InfoHuman([]*block.Info{top})
	if !strings.Contains(h, "Snapshot list:\nID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT\n1         s                     0 B") {
		t.Errorf("snapshot table:\n%s", h)
	}
}

func TestDumpHumanNested(t *testing.T) {
	d := block.OrderedMap{}.Add("bitmaps", []block.OrderedMap{
		block.OrderedMap{}.Add("name", "b0").Add("flags", []string{"auto"}),
	})
	var b strings.Builder
	dumpHuman(&b, toQ(d), 1)
	want := "    bitmaps:\n        [0]:\n            flags:\n                [0]: auto\n            name: b0\n"
	if b.String() != want {
		t.Errorf("got:\n%q\nwant:\n%q", b.String(), want)
	}
}

func TestMapRendering(t *testing.T) {
	exts := []block.Extent{
		{Offset: 0, Length: 4096, Status: block.StatusData | block.StatusAllocated, HostOffset: 0, File: "a.img"},
		{Offset: 4096, Length: 8192, Status: block.StatusZero | block.StatusAllocated, HostOffset: 4096, File: "a.img"},
		{Offset: 12288, Length: 65536, Status: block.StatusData | block.StatusAllocated, HostOffset: 0x50000, File: "a.img"},
		{Offset: 77824, Length: 4096, Status: block.StatusZero, HostOffset: -1, Depth: 1},
	}
	wantJSON := `[{ "start": 0, "length": 4096, "depth": 0, "present": true, "zero": false, "data": true, "offset": 0},
{ "start": 4096, "length": 8192, "depth": 0, "present": true, "zero": true, "data": false, "offset": 4096},
{ "start": 12288, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true, "offset": 327680},
{ "start": 77824, "length": 4096, "depth": 1, "present": false, "zero": true, "data": false}]
`
	if got := MapJSON(exts); got != wantJSON {
		t.Errorf("MapJSON:\n%s", got)
	}
	wantHuman := "Offset          Length          Mapped to       File\n" +
		"0               0x1000          0               a.img\n" +
		"0x3000          0x10000         0x50000         a.img\n"
	got, err := MapHuman(exts)
	if err != nil || got != wantHuman {
		t.Errorf("MapHuman: %v\n%s", err, got)
	}
	if _, err := MapHuman([]block.Extent{{Length: 1, Status: block.StatusData | block.StatusCompressed, HostOffset: -1}}); err != ErrUnmappable {
		t.Errorf("compressed data: err %v, want ErrUnmappable", err)
	}
	if got := MapJSON(nil); got != "[]\n" {
		t.Errorf("empty map %q", got)
	}
}

// An empty range maps to one entry of length 0 at the start asked for,
// as qemu-img map prints it.
func TestMapEmptyRange(t *testing.T) {
	img := mem.New(1 << 20)
	for _, r := range [][2]int64{{1 << 20, 1 << 30}, {2 << 20, 4096}, {0, 0}, {4096, 0}} {
		exts, err := Map(img, r[0], r[1])
		if err != nil || len(exts) != 1 || exts[0].Offset != r[0] || exts[0].Length != 0 || exts[0].Status != 0 {
			t.Errorf("Map(%d, %d) = %+v, %v", r[0], r[1], exts, err)
		}
		want := fmt.Sprintf(`[{ "start": %d, "length": 0, "depth": 0, "present": false, "zero": false, "data": false}]`+"\n", r[0])
		if got := MapJSON(exts); got != want {
			t.Errorf("MapJSON = %q, want %q", got, want)
		}
	}
}

func TestCvtstr(t *testing.T) {
	for v, want := range map[float64]string{
		0: "0 bytes", 100: "100 bytes", 4096: "4 KiB", 1572864: "1.500 MiB", 1234: "1.205 KiB", 1 << 30: "1 GiB",
	} {
		if got := Cvtstr(v); got != want {
			t.Errorf("Cvtstr(%v) = %q, want %q", v, got, want)
		}
	}
}

func TestCheckRendering(t *testing.T) {
	r := &block.CheckResult{Filename: "c.qcow2", Format: "qcow2", ImageEndOffset: 262144, TotalClusters: 160}
	want := `{
    "image-end-offset": 262144,
    "total-clusters": 160,
    "check-errors": 0,
    "filename": "c.qcow2",
    "format": "qcow2"
}
`
	if got := CheckJSON(r); got != want {
		t.Errorf("CheckJSON:\n%s", got)
	}
	if got := CheckHuman(r); got != "No errors were found on the image.\nImage end offset: 262144\n" {
		t.Errorf("CheckHuman clean:\n%s", got)
	}
	if CheckStatus(r) != CheckClean {
		t.Error("clean image not status 0")
	}
	r.Leaks, r.AllocatedClusters = 2, 10
	if CheckStatus(r) != CheckLeaks {
		t.Error("leaks not status 3")
	}
	h := CheckHuman(r)
	if !strings.Contains(h, "\n2 leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n") ||
		!strings.Contains(h, "10/160 = 6.25% allocated, 0.00% fragmented, 0.00% compressed clusters\n") {
		t.Errorf("CheckHuman leaks:\n%s", h)
	}
	r.Corruptions = 1
	if CheckStatus(r) != CheckCorruptions {
		t.Error("corruptions not status 2")
	}
	r.CheckErrors = 1
	if CheckStatus(r) != CheckFailed {
		t.Error("check errors not status 1")
	}
}

// memImage returns a RAM disk holding data at the given offsets.
func memImage(t *testing.T, size int64, writes map[int64][]byte) *mem.Image {
	t.Helper()
	m := mem.New(size)
	for off, p := range writes {
		if _, err := m.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
	}
	return m
}

func fill(n int, c byte) []byte { return bytes.Repeat([]byte{c}, n) }

func TestCompare(t *testing.T) {
	const mib = 1 << 20
	a := memImage(t, 4*mib, map[int64][]byte{0: fill(4096, 1), 3 * mib: fill(100, 2)})
	b := memImage(t, 4*mib, map[int64][]byte{0: fill(4096, 1), 3 * mib: fill(100, 2)})
	var out bytes.Buffer
	if code, err := Compare(a, b, "a", "b", false, &out); code != 0 || err != nil || out.String() != "Images are identical.\n" {
		t.Fatalf("same: %d %v %q", code, err, out.String())
	}
	// A difference inside a run of data is reported at its sector.
	b.WriteAt([]byte{9}, 3*mib+1000)
	out.Reset()
	if code, _ := Compare(a, b, "a", "b", false, &out); code != 1 || out.String() != "Content mismatch at offset 3146240!\n" {
		t.Fatalf("different: %d %q", code, out.String())
	}
	// Data in only one image, in a range the other leaves unallocated.
	c := memImage(t, 4*mib, map[int64][]byte{0: fill(4096, 1), 3 * mib: fill(100, 2), 2*mib + 700: {5}})
	out.Reset()
	if code, _ := Compare(a, c, "a", "c", false, &out); code != 1 || out.String() != "Content mismatch at offset 2097664!\n" {
		t.Fatalf("extra data: %d %q", code, out.String())
	}
	// Larger image whose tail is zero: identical with a warning; strict fails.
	d := memImage(t, 8*mib, map[int64][]byte{0: fill(4096, 1), 3 * mib: fill(100, 2)})
	out.Reset()
	if code, _ := Compare(a, d, "a", "d", false, &out); code != 0 || out.String() != "Warning: Image size mismatch!\nImages are identical.\n" {
		t.Fatalf("size mismatch: %d %q", code, out.String())
	}
	out.Reset()
	if code, _ := Compare(d, a, "d", "a", true, &out); code != 1 || out.String() != "Strict mode: Image size mismatch!\n" {
		t.Fatalf("strict size: %d %q", code, out.String())
	}
	d.WriteAt([]byte{1}, 7*mib+513)
	out.Reset()
	if code, _ := Compare(d, a, "d", "a", false, &out); code != 1 || out.String() != "Warning: Image size mismatch!\nContent mismatch at offset 7340544!\n" {
		t.Fatalf("tail data: %d %q", code, out.String())
	}
	// Reads that fail give status 4.
	a.Close()
	out.Reset()
	if code, err := Compare(a, b, "a", "b", false, &out); code < 2 || err == nil {
		t.Fatalf("closed image: %d %v", code, err)
	}
}

func TestCompareBuffers(t *testing.T) {
	p, q := make([]byte, 2048), make([]byte, 2048)
	if n, diff := compareBuffers(p, q); diff || n != 2048 {
		t.Errorf("equal: %d %v", n, diff)
	}
	q[1500] = 1
	if n, diff := compareBuffers(p, q); !diff || n != 1024 {
		t.Errorf("differ at sector 2: %d %v", n, diff)
	}
	q[3] = 1
	if n, diff := compareBuffers(p, q); !diff || n != 0 {
		t.Errorf("differ at sector 0: %d %v", n, diff)
	}
}

func TestCopyKeepsSparseness(t *testing.T) {
	const mib = 1 << 20
	src := memImage(t, 16*mib, map[int64][]byte{
		0:               fill(4096, 1),
		5*mib + 65536:   fill(3*65536, 2),
		15*mib + 100000: fill(10, 3),
	})
	// A chunk of zero bytes written as data must not become data.
	src.WriteAt(fill(65536, 0), 8*mib)
	for _, ooo := range []bool{false, true} {
		for _, workers := range []int{1, 3, 8} {
			dst := mem.New(16 * mib)
			if err := Copy(src, dst, CopyOptions{Sparse: 4096, Workers: workers, OutOfOrder: ooo, TargetZeroed: true, ChunkSize: 256 << 10}); err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			if code, _ := Compare(src, dst, "src", "dst", false, &out); code != 0 {
				t.Fatalf("copy differs: %s", out.String())
			}
			in, _ := dst.Info()
			if in.ActualSize != 5*65536 {
				t.Errorf("workers %d ooo %v: target holds %d bytes, want %d", workers, ooo, in.ActualSize, 5*65536)
			}
		}
	}
}

func TestCopyIntoDirtyTargetZeroes(t *testing.T) {
	src := memImage(t, 1<<20, map[int64][]byte{4096: fill(512, 7)})
	dst := memImage(t, 1<<20, map[int64][]byte{0: fill(1<<20, 9)})
	if err := Copy(src, dst, CopyOptions{Sparse: 4096}); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if code, _ := Compare(src, dst, "src", "dst", true, &out); code != 0 {
		t.Fatalf("copy into used target differs: %s", out.String())
	}
}

func TestCopyFullyAllocated(t *testing.T) {
	src := memImage(t, 1<<20, map[int64][]byte{4096: fill(512, 7)})
	dst := mem.New(1 << 20)
	if err := Copy(src, dst, CopyOptions{Sparse: 0, TargetZeroed: true}); err != nil {
		t.Fatal(err)
	}
	if in, _ := dst.Info(); in.ActualSize != 0 && in.ActualSize != 64<<10 {
		// mem drops zero writes to absent chunks, so only the data chunk shows.
		t.Errorf("unexpected allocation %d", in.ActualSize)
	}
}

type fakeCompressed struct {
	*mem.Image
	ch chan int64
}

func (f *fakeCompressed) WriteCompressed(p []byte, off int64) error {
	f.ch <- off
	_, err := f.Image.WriteAt(p, off)
	return err
}

func (f *fakeCompressed) Info() (*block.Info, error) {
	in, err := f.Image.Info()
	in.ClusterSize = 65536
	return in, err
}

func TestCopyCompressed(t *testing.T) {
	src := memImage(t, 1<<20+4096, map[int64][]byte{0: fill(65536, 1), 65536 * 3: fill(10, 2), 1 << 20: fill(4096, 3)})
	dst := &fakeCompressed{Image: mem.New(1<<20 + 4096), ch: make(chan int64, 100)}
	if err := Copy(src, dst, CopyOptions{Sparse: 4096, Compress: true, TargetZeroed: true}); err != nil {
		t.Fatal(err)
	}
	close(dst.ch)
	var got []int64
	for o := range dst.ch {
		got = append(got, o)
	}
	if len(got) != 3 {
		t.Errorf("compressed writes at %v, want clusters 0, 196608 and the last partial one", got)
	}
	// Without the interface, -c is refused.
	if err := Copy(src, mem.New(1<<20+4096), CopyOptions{Compress: true}); err == nil {
		t.Error("compressing into a format without CompressedWriter succeeded")
	}
}

// precompressor records how many Precompress calls run at once; the first
// waits (a bounded time) for a second to join it.
type precompressor struct {
	fakeCompressed
	mu           sync.Mutex
	active, peak int
	two          chan struct{}
	once         sync.Once
}

func (f *precompressor) WriteCompressed(p []byte, off int64) error {
	_, err := f.Image.WriteAt(p, off)
	return err
}

func (f *precompressor) Precompress(p []byte, off int64) (func() error, error) {
	f.mu.Lock()
	f.active++
	f.peak = max(f.peak, f.active)
	if f.active == 2 {
		f.once.Do(func() { close(f.two) })
	}
	f.mu.Unlock()
	select {
	case <-f.two:
	case <-time.After(10 * time.Second):
	}
	f.mu.Lock()
	f.active--
	f.mu.Unlock()
	return func() error { _, err := f.Image.WriteAt(p, off); return err }, nil
}

// Without -W the chunks are stored in order, but compressed by every
// worker at once.
func TestCopyCompressesInParallelInOrder(t *testing.T) {
	const size = 8 << 20
	writes := map[int64][]byte{}
	for off := int64(0); off < size; off += 1 << 20 {
		writes[off] = fill(1<<20, byte(off>>20+1))
	}
	src := memImage(t, size, writes)
	dst := &precompressor{fakeCompressed: fakeCompressed{Image: mem.New(size)}, two: make(chan struct{})}
	if err := Copy(src, dst, CopyOptions{Sparse: 4096, Compress: true, TargetZeroed: true, Workers: 4, ChunkSize: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if dst.peak < 2 {
		t.Errorf("at most %d chunks were compressed at once", dst.peak)
	}
	var out bytes.Buffer
	if code, err := Compare(src, dst.Image, "src", "dst", false, &out); code != 0 || err != nil {
		t.Errorf("copy differs: %d %v %s", code, err, out.String())
	}
}

func TestCopyOptionsValidation(t *testing.T) {
	src, dst := mem.New(1<<20), mem.New(1<<20)
	for _, o := range []CopyOptions{{Workers: 17}, {Workers: -1}, {Sparse: 100}, {Sparse: 32 << 20}} {
		if err := Copy(src, dst, o); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
	if err := Copy(mem.New(2<<20), dst, CopyOptions{}); err == nil {
		t.Error("copy into a smaller target accepted")
	}
}

func TestIOCommands(t *testing.T) {
	m := mem.New(1 << 20)
	var out bytes.Buffer
	q := &IO{Img: m, Out: &out}
	for _, c := range []string{"write -P 0xab 0 4k", "read -P 0xab 0 4k", "write -z 1k 1k", "read -v 1020 8", "discard 8k 4k", "flush", "map", "info", "length"} {
		if err := q.Run(c); err != nil {
			t.Fatalf("%s: %v", c, err)
		}
	}
	want := `wrote 4096/4096 bytes at offset 0
read 4096/4096 bytes at offset 0
wrote 1024/1024 bytes at offset 1024
000003fc:  ab ab ab ab 00 00 00 00  ........
read 8/8 bytes at offset 1020
discard 4096/4096 bytes at offset 8192
1 MiB (0x100000) bytes     allocated at offset 0 bytes (0x0)
format name: mem
cluster size: 0 bytes
vm state offset: 0 bytes
1 MiB
`
	if out.String() != want {
		t.Errorf("output:\n%s\nwant:\n%s", out.String(), want)
	}
	out.Reset()
	if err := q.Run("read -P 0xab 1000 100"); err != ErrIOFailed || out.String() != "Pattern verification failed at offset 1024, 100 bytes\nread 100/100 bytes at offset 1000\n" {
		t.Errorf("pattern mismatch: %v %q", err, out.String())
	}
	for _, bad := range []string{"read", "read 0", "read x 1", "read -P 300 0 1", "write -z -P 1 0 1", "frobnicate", "read -k 0 1"} {
		if err := q.Run(bad); err == nil || err == ErrIOFailed {
			t.Errorf("%q: err %v, want a usage error", bad, err)
		}
	}
	out.Reset()
	if err := q.Run("read 1M 1"); err != ErrIOFailed || !strings.HasPrefix(out.String(), "read failed: ") {
		t.Errorf("read past the end: %v %q", err, out.String())
	}
}

type countingImage struct {
	*mem.Image
	mu      chan struct{}
	written int64
}

func (c *countingImage) WriteAt(p []byte, off int64) (int, error) {
	c.mu <- struct{}{}
	c.written += int64(len(p))
	<-c.mu
	return c.Image.WriteAt(p, off)
}

// Only the 4 KiB blocks that hold non-zero bytes are written.
func TestCopyWritesOnlyNonZeroBlocks(t *testing.T) {
	const mib = 1 << 20
	src := memImage(t, 16*mib, map[int64][]byte{
		0:               fill(4096, 1),
		5*mib + 65536:   fill(3*65536, 2),
		8 * mib:         fill(65536, 0),
		15*mib + 100000: fill(10, 3),
	})
	src.WriteAt(fill(1, 4), 8*mib+8192)
	dst := &countingImage{Image: mem.New(16 * mib), mu: make(chan struct{}, 1)}
	if err := Copy(src, dst, CopyOptions{Sparse: 4096, TargetZeroed: true}); err != nil {
		t.Fatal(err)
	}
	if want := int64(4096 + 3*65536 + 4096 + 4096); dst.written != want {
		// 15M+100000 straddles no boundary: one 4 KiB block.
		t.Errorf("wrote %d bytes, want %d", dst.written, want)
	}
}

func TestOptionHelp(t *testing.T) {
	f := &block.Format{Name: "x", CreateOptions: []block.OptionSpec{
		{Name: "size", Type: block.OptSize, Help: "Virtual disk size"},
		{Name: "lazy_refcounts", Type: block.OptBool, Default: "off", Help: "Postpone refcount updates"},
		{Name: "cluster_size", Type: block.OptSize, Default: "65536", Help: "qcow2 cluster size"},
		{Name: "refcount_bits", Type: block.OptNumber, Help: "Width of a reference count entry in bits"},
	}}
	want := `Supported x options:
  cluster_size=<size>    - qcow2 cluster size (default: 65536)
  lazy_refcounts=<bool (on/off)> - Postpone refcount updates (default: off)
  refcount_bits=<num>    - Width of a reference count entry in bits
  size=<size>            - Virtual disk size
`
	if got := OptionHelp(f); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}

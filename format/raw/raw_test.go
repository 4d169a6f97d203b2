package raw_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"vdisk/block"
	"vdisk/format/raw"
	_ "vdisk/protocol/file"
)

// Stand-ins for formats, so the probe guard can be tested without them:
// fakeqcow has qcow2's magic; fakefooter probes by its last sector, as
// fixed VHD does; fakezero has a magic with a zero byte, which zeroing
// can complete (as with a VHD disk type of 0x0102 zeroed to 2).
func init() {
	fake := func(name string, inTail bool, magic string) {
		block.Register(&block.Format{
			Name: name,
			Probe: func(head, tail []byte, _ string) int {
				b := head
				if inTail {
					b = tail
				}
				if bytes.HasPrefix(b, []byte(magic)) {
					return 100
				}
				return 0
			},
		})
	}
	fake("fakeqcow", false, "QFI\xfb")
	fake("fakefooter", true, "conectix")
	fake("fakezero", false, "ZZ\x00Z")
}

func create(t *testing.T, size int64, prealloc string) string {
	t.Helper()
	name := t.TempDir() + "/r.img"
	opts := block.Options{"size": size}
	if prealloc != "" {
		opts["preallocation"] = prealloc
	}
	if err := block.Create(name, "raw", opts); err != nil {
		t.Fatal(err)
	}
	return name
}

func TestProbedRawRefusesFormatFooter(t *testing.T) {
	const size = 1 << 20
	name := create(t, size, "")
	probed := open(t, name, block.OpenOptions{})
	defer probed.Close()
	_, err := probed.WriteAt([]byte("conectix"), size-512)
	if err == nil || !strings.Contains(err.Error(), "fakefooter") {
		t.Fatalf("probed raw accepted a footer in its last sector: %v", err)
	}
	// The same bytes anywhere else in the tail are harmless.
	if _, err := probed.WriteAt([]byte("conectix"), size-8); err != nil {
		t.Errorf("harmless write to the last sector: %v", err)
	}
	// A write spanning head and tail at once is judged as a whole.
	small := create(t, 1024, "")
	img := open(t, small, block.OpenOptions{})
	defer img.Close()
	buf := make([]byte, 1024)
	copy(buf[512:], "conectix")
	if _, err := img.WriteAt(buf, 0); err == nil {
		t.Error("a whole-image write planting a footer was accepted")
	}
}

func allocated(t *testing.T, name string) int64 {
	t.Helper()
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := block.Open(name, block.OpenOptions{Format: "raw", ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	in, _ := img.Info()
	return in.ActualSize
}

func open(t *testing.T, name string, opts block.OpenOptions) block.Image {
	t.Helper()
	img, err := block.Open(name, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { img.Close() })
	return img
}

func TestCreatePreallocation(t *testing.T) {
	const size = 4 << 20
	for _, c := range []struct {
		mode     string
		min, max int64
	}{
		{"", 4096, 64 << 10}, // sparse, only the first block written
		{"off", 4096, 64 << 10},
		{"falloc", size, size + 1<<20},
		{"full", size, size + 1<<20},
	} {
		name := create(t, size, c.mode)
		st, _ := os.Stat(name)
		if st.Size() != size {
			t.Errorf("%q: size %d", c.mode, st.Size())
		}
		if a := allocated(t, name); a < c.min || a > c.max {
			t.Errorf("preallocation=%q: %d bytes allocated, want %d..%d", c.mode, a, c.min, c.max)
		}
	}
	if err := block.Create(t.TempDir()+"/x", "raw", block.Options{"size": int64(1), "preallocation": "metadata"}); err == nil {
		t.Error("preallocation=metadata accepted")
	}
	if err := block.Create(t.TempDir()+"/x", "raw", block.Options{}); err == nil {
		t.Error("create without size accepted")
	}
}

// Like qemu-img, sizes round up to whole sectors and the first block is
// written, so that map shows it as data.
func TestCreateMatchesQEMULayout(t *testing.T) {
	name := create(t, 5000, "")
	st, _ := os.Stat(name)
	if st.Size() != 5120 {
		t.Errorf("size %d, want 5120", st.Size())
	}
	img := open(t, name, block.OpenOptions{Format: "raw", ReadOnly: true})
	exts, err := block.MapChain(img, 0, img.Size())
	if err != nil {
		t.Fatal(err)
	}
	if len(exts) != 2 || exts[0].Length != 4096 || exts[0].Status&block.StatusData == 0 || exts[1].Status&block.StatusZero == 0 {
		t.Errorf("map %v", exts)
	}
	small := create(t, 100, "")
	if st, _ := os.Stat(small); st.Size() != 512 {
		t.Errorf("100-byte image is %d bytes, want 512", st.Size())
	}
}

func TestBlockStatusFollowsHoles(t *testing.T) {
	name := create(t, 1<<20, "")
	img := open(t, name, block.OpenOptions{Format: "raw"})
	data := bytes.Repeat([]byte{7}, 64<<10)
	img.WriteAt(data, 256<<10)
	img.WriteAt(data, 512<<10)
	exts, err := img.BlockStatus(0, img.Size())
	if err != nil {
		t.Fatal(err)
	}
	type run struct {
		off, n int64
		data   bool
	}
	var got []run
	for _, e := range exts {
		got = append(got, run{e.Offset, e.Length, e.Status&block.StatusData != 0})
		if e.HostOffset != e.Offset {
			t.Errorf("raw extent host offset %d != %d", e.HostOffset, e.Offset)
		}
	}
	want := []run{{0, 4096, true}, {4096, 256<<10 - 4096, false}, {256 << 10, 64 << 10, true},
		{320 << 10, 192 << 10, false}, {512 << 10, 64 << 10, true}, {576 << 10, 448 << 10, false}}
	if len(got) != len(want) {
		t.Fatalf("extents %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("extent %d: %v, want %v", i, got[i], want[i])
		}
	}
	// Discard punches a hole; WriteZeroes with unmap too; both read zeros.
	if err := img.Discard(256<<10, 64<<10); err != nil {
		t.Fatal(err)
	}
	if err := img.WriteZeroes(512<<10, 32<<10, block.ZeroMayUnmap); err != nil {
		t.Fatal(err)
	}
	if err := img.WriteZeroes(544<<10, 4096, 0); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	img.ReadAt(buf, 0)
	if !block.IsZero(buf[256<<10:548<<10]) || buf[548<<10] != 7 || buf[576<<10-1] != 7 {
		t.Error("zeroed ranges do not read as zeros, or too much was zeroed")
	}
	exts, _ = img.BlockStatus(256<<10, 64<<10)
	if len(exts) != 1 || exts[0].Status != block.StatusZero {
		t.Errorf("discarded range: %v", exts)
	}
	exts, _ = img.BlockStatus(512<<10, 32<<10)
	if len(exts) != 1 || exts[0].Status != block.StatusZero {
		t.Errorf("unmapped zero range: %v", exts)
	}
}

func TestReadWriteBounds(t *testing.T) {
	img := open(t, create(t, 8192, ""), block.OpenOptions{Format: "raw"})
	if _, err := img.WriteAt([]byte{1}, 8192); !errors.Is(err, block.ErrOutOfRange) {
		t.Errorf("write past the end: %v", err)
	}
	if _, err := img.ReadAt(make([]byte, 2), 8191); !errors.Is(err, block.ErrOutOfRange) {
		t.Errorf("read past the end: %v", err)
	}
	if err := img.Discard(-1, 10); err == nil {
		t.Error("negative discard accepted")
	}
	ro := open(t, create(t, 8192, ""), block.OpenOptions{Format: "raw", ReadOnly: true})
	if _, err := ro.WriteAt([]byte{1}, 0); !errors.Is(err, block.ErrReadOnly) {
		t.Errorf("write to read-only: %v", err)
	}
	if err := ro.(block.Resizer).Resize(1, true); !errors.Is(err, block.ErrReadOnly) {
		t.Errorf("resize of read-only: %v", err)
	}
}

func TestProbedRawRefusesFormatHeader(t *testing.T) {
	name := create(t, 1<<20, "")
	header := []byte("QFI\xfb\x00\x00\x00\x03")
	probed := open(t, name, block.OpenOptions{})
	_, err := probed.WriteAt(header, 0)
	if err == nil || !strings.Contains(err.Error(), "-f raw") || !strings.Contains(err.Error(), "fakeqcow") {
		t.Fatalf("probed raw accepted a format header: %v", err)
	}
	// Writes elsewhere, and harmless writes to sector 0, still work.
	if _, err := probed.WriteAt([]byte("hello"), 0); err != nil {
		t.Errorf("harmless write to sector 0: %v", err)
	}
	if _, err := probed.WriteAt(header, 4096); err != nil {
		t.Errorf("header bytes past the probed area: %v", err)
	}
	// Byte by byte, the last byte completes the magic and is refused.
	probed.WriteAt([]byte("QFI"), 0)
	if _, err := probed.WriteAt([]byte{0xfb}, 3); err == nil {
		t.Error("completing the magic byte by byte was accepted")
	}
	probed.Close()
	explicit := open(t, name, block.OpenOptions{Format: "raw"})
	if _, err := explicit.WriteAt(header, 0); err != nil {
		t.Errorf("-f raw refused the write: %v", err)
	}
}

func TestResize(t *testing.T) {
	name := create(t, 1<<20, "")
	img := open(t, name, block.OpenOptions{Format: "raw"})
	r := img.(block.Resizer)
	img.WriteAt([]byte{9}, 1<<20-1)
	if err := r.Resize(2<<20, false); err != nil || img.Size() != 2<<20 {
		t.Fatalf("grow: %v size %d", err, img.Size())
	}
	if err := r.Resize(1<<19, false); err == nil || !strings.Contains(err.Error(), "--shrink") {
		t.Errorf("shrink without flag: %v", err)
	}
	if err := r.Resize(1<<19, true); err != nil || img.Size() != 1<<19 {
		t.Errorf("shrink: %v", err)
	}
	if st, _ := os.Stat(name); st.Size() != 1<<19 {
		t.Errorf("file size %d", st.Size())
	}
	if err := r.Resize(-1, true); err == nil {
		t.Error("negative size accepted")
	}
}

// A file whose length is not a multiple of 512 is a disk of whole
// sectors, as in qemu-img: the rest of the last sector reads as zeros, a
// write there extends the file, and block status reports it as zeros.
func TestPartialLastSector(t *testing.T) {
	name := t.TempDir() + "/u.img"
	if err := os.WriteFile(name, []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	img := open(t, name, block.OpenOptions{Format: "raw"})
	if img.Size() != 512 {
		t.Fatalf("size %d, want 512", img.Size())
	}
	b := bytes.Repeat([]byte{0xff}, 512)
	if _, err := img.ReadAt(b, 0); err != nil || string(b[:5]) != "hello" || !bytes.Equal(b[5:], make([]byte, 507)) {
		t.Errorf("read: %v %q", err, b[:8])
	}
	exts, err := img.BlockStatus(0, 512)
	if err != nil || len(exts) != 2 || exts[0].Length != 5 || exts[0].Status != block.StatusData ||
		exts[1].Offset != 5 || exts[1].Length != 507 || exts[1].Status != block.StatusZero {
		t.Errorf("block status: %v %+v", err, exts)
	}
	if _, err := img.WriteAt([]byte("!"), 99); err != nil {
		t.Fatal(err)
	}
	if _, err := img.WriteAt([]byte("!"), 512); err == nil {
		t.Error("write past the last sector accepted")
	}
	if st, _ := os.Stat(name); st.Size() != 100 {
		t.Errorf("file size %d after a write at 99, want 100", st.Size())
	}
	if err := img.(block.Resizer).Resize(1000, false); err != nil || img.Size() != 1024 {
		t.Errorf("resize to 1000: %v, size %d", err, img.Size())
	}
}

func TestFileAccessor(t *testing.T) {
	img := open(t, create(t, 4096, ""), block.OpenOptions{Format: "raw"})
	if img.(*raw.Image).File() == nil {
		t.Error("no container")
	}
}

// meetFile holds the first read of the probed head, after it read, until
// a second one has read too (or a timeout passes): two guarded writes
// then both check the old head unless something serialises them.
type meetFile struct {
	block.File
	mu      sync.Mutex
	arrived int
	both    chan struct{}
}

func (f *meetFile) ReadAt(p []byte, off int64) (int, error) {
	n, err := f.File.ReadAt(p, off)
	if off == 0 && len(p) == block.ProbeHeadSize {
		f.mu.Lock()
		f.arrived++
		k := f.arrived
		f.mu.Unlock()
		switch k {
		case 1:
			select {
			case <-f.both:
			case <-time.After(300 * time.Millisecond):
			}
		case 2:
			close(f.both)
		}
	}
	return n, err
}

// TestProbeGuardConcurrentHalves: two concurrent writes, each half of a
// format magic, must not both pass the guard.
func TestProbeGuardConcurrentHalves(t *testing.T) {
	name := create(t, 1<<20, "")
	f, err := block.OpenFile(name, block.OpenFlags{})
	if err != nil {
		t.Fatal(err)
	}
	mf := &meetFile{File: f, both: make(chan struct{})}
	img, err := raw.Open(mf, &block.OpenOptions{Probed: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	var wg sync.WaitGroup
	for _, w := range []struct {
		b   string
		off int64
	}{{"QF", 0}, {"I\xfb", 2}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := img.WriteAt([]byte(w.b), w.off); err != nil {
				t.Log(err)
			}
		}()
	}
	wg.Wait()
	head := make([]byte, 4)
	if _, err := f.ReadAt(head, 0); err != nil {
		t.Fatal(err)
	}
	if string(head) == "QFI\xfb" {
		t.Fatal("two concurrent halves of a magic both passed the probe guard")
	}
}

// hintFile records the create hints a container is given, and fails them
// as a file system without them does.
type hintFile struct {
	block.File
	calls []string
}

func (h *hintFile) SetNoCOW() error {
	h.calls = append(h.calls, "nocow")
	return block.ErrNotSupported
}

func (h *hintFile) SetExtentSizeHint(n uint32) error {
	h.calls = append(h.calls, fmt.Sprintf("extent %d", n))
	return block.ErrNotSupported
}

// nocow and extent_size_hint reach the container as qemu-img passes them
// (a 1 MiB hint by default); a container without them fails no create.
func TestCreateHints(t *testing.T) {
	for _, tc := range []struct {
		opts block.Options
		want string
	}{
		{block.Options{}, "extent 1048576"},
		{block.Options{"nocow": true}, "nocow,extent 1048576"},
		{block.Options{"nocow": false, "extent_size_hint": int64(0)}, "extent 0"},
		{block.Options{"extent_size_hint": int64(4096)}, "extent 4096"},
	} {
		f, err := block.OpenFile(t.TempDir()+"/h.img", block.OpenFlags{Create: true})
		if err != nil {
			t.Fatal(err)
		}
		h := &hintFile{File: f}
		tc.opts["size"] = int64(1 << 20)
		if err := raw.Format.Create(h, tc.opts); err != nil {
			t.Errorf("%v: %v", tc.opts, err)
		}
		if got := strings.Join(h.calls, ","); got != tc.want {
			t.Errorf("%v: hints %q, want %q", tc.opts, got, tc.want)
		}
		f.Close()
	}
	if _, err := raw.Format.CheckCreate("x.img", block.Options{"size": int64(1), "extent_size_hint": int64(1 << 32)}); err == nil || !strings.Contains(err.Error(), "too large") {
		t.Errorf("hint of 4 GiB: %v", err)
	}
}

// Zero writes, by every path, are guarded like data writes; a discard
// that would complete a header is skipped (discarding is advisory).
func TestProbedRawGuardsZeroes(t *testing.T) {
	name := create(t, 1<<20, "")
	img := open(t, name, block.OpenOptions{})
	if _, err := img.WriteAt([]byte("ZZ\x01Z"), 0); err != nil {
		t.Fatal(err)
	}
	for _, flags := range []block.ZeroFlags{0, block.ZeroMayUnmap, block.ZeroFast, block.ZeroFast | block.ZeroMayUnmap} {
		if err := img.WriteZeroes(2, 1, flags); err == nil || !strings.Contains(err.Error(), "fakezero") {
			t.Errorf("zeroing with flags %d completed a magic: %v", flags, err)
		}
	}
	if err := img.Discard(2, 1); err != nil {
		t.Errorf("discard: %v", err)
	}
	b := make([]byte, 4)
	img.ReadAt(b, 0)
	if string(b) != "ZZ\x01Z" {
		t.Errorf("head after refused zeroing and discard: %q", b)
	}
	// Zeroing the whole magic is harmless.
	if err := img.WriteZeroes(0, 4096, 0); err != nil {
		t.Errorf("zeroing the first block: %v", err)
	}
}

// The container's last sector is what probing sees: with a partial last
// sector, zeroing its rest extends the file, so bytes written harmlessly
// before become its end.
func TestProbedRawGuardsFileExtension(t *testing.T) {
	const size = 1 << 20
	name := t.TempDir() + "/u.img"
	if err := os.WriteFile(name, make([]byte, size-100), 0o644); err != nil {
		t.Fatal(err)
	}
	img := open(t, name, block.OpenOptions{})
	if img.Size() != size {
		t.Fatalf("size %d", img.Size())
	}
	// Harmless now: the file's last 512 bytes start 100 bytes earlier.
	if _, err := img.WriteAt([]byte("conectix"), size-512); err != nil {
		t.Fatal(err)
	}
	for _, flags := range []block.ZeroFlags{0, block.ZeroMayUnmap} {
		if err := img.WriteZeroes(size-100, 100, flags); err == nil || !strings.Contains(err.Error(), "fakefooter") {
			t.Errorf("zeroing (flags %d) up to the disk's end made the footer the file's end: %v", flags, err)
		}
	}
	if _, err := img.WriteAt(make([]byte, 100), size-100); err == nil {
		t.Error("writing up to the disk's end made the footer the file's end")
	}
	if st, _ := os.Stat(name); st.Size() != size-100 {
		t.Errorf("file size %d", st.Size())
	}
}

// Shrinking a probed raw image must not make a footer inside the disk its
// last sector; -f raw may.
func TestProbedRawGuardsResize(t *testing.T) {
	name := create(t, 2<<20, "")
	explicit := open(t, name, block.OpenOptions{Format: "raw"})
	if _, err := explicit.WriteAt([]byte("conectix"), 1<<20-512); err != nil {
		t.Fatal(err)
	}
	explicit.Close()
	probed := open(t, name, block.OpenOptions{})
	err := probed.(block.Resizer).Resize(1<<20, true)
	if err == nil || !strings.Contains(err.Error(), "fakefooter") || !strings.Contains(err.Error(), "-f raw") {
		t.Errorf("shrink that exposes a footer: %v", err)
	}
	if st, _ := os.Stat(name); st.Size() != 2<<20 || probed.Size() != 2<<20 {
		t.Errorf("refused shrink changed the size: file %d, image %d", st.Size(), probed.Size())
	}
	if err := probed.(block.Resizer).Resize(1<<20+4096, true); err != nil {
		t.Errorf("harmless shrink: %v", err)
	}
	probed.Close()
	explicit = open(t, name, block.OpenOptions{Format: "raw"})
	if err := explicit.(block.Resizer).Resize(1<<20, true); err != nil {
		t.Errorf("-f raw shrink: %v", err)
	}
}

// zeroFile records how a container is asked to zero, and can lack
// ZERO_RANGE as tmpfs does.
type zeroFile struct {
	block.File
	noZeroRange bool
	calls       []string
}

func (z *zeroFile) WriteAt(p []byte, off int64) (int, error) {
	z.calls = append(z.calls, "write")
	return z.File.WriteAt(p, off)
}

func (z *zeroFile) PunchHole(off, n int64) error {
	z.calls = append(z.calls, "punch")
	return z.File.(block.HolePuncher).PunchHole(off, n)
}

func (z *zeroFile) ZeroRange(off, n int64) error {
	z.calls = append(z.calls, "zerorange")
	if z.noZeroRange {
		return block.ErrNotSupported
	}
	return z.File.(block.ZeroRanger).ZeroRange(off, n)
}

// WriteZeroes frees space only when allowed to, zeroes a range without
// writing zeros when it can, and with ZeroFast fails rather than write.
func TestWriteZeroesPaths(t *testing.T) {
	for _, tc := range []struct {
		flags       block.ZeroFlags
		noZeroRange bool
		want        string
		err         error
	}{
		{0, false, "zerorange", nil},
		{block.ZeroMayUnmap, false, "punch", nil},
		{block.ZeroFast, false, "zerorange", nil},
		{0, true, "zerorange,write", nil},
		{block.ZeroFast, true, "zerorange", block.ErrNotSupported},
	} {
		f, err := block.OpenFile(create(t, 1<<20, ""), block.OpenFlags{})
		if err != nil {
			t.Fatal(err)
		}
		z := &zeroFile{File: f, noZeroRange: tc.noZeroRange}
		img, err := raw.Open(z, &block.OpenOptions{Format: "raw"})
		if err != nil {
			t.Fatal(err)
		}
		err = img.WriteZeroes(64<<10, 64<<10, tc.flags)
		if !errors.Is(err, tc.err) || (tc.err == nil && err != nil) {
			t.Errorf("flags %d, no ZERO_RANGE %v: error %v, want %v", tc.flags, tc.noZeroRange, err, tc.err)
		}
		if got := strings.Join(z.calls, ","); got != tc.want {
			t.Errorf("flags %d, no ZERO_RANGE %v: calls %s, want %s", tc.flags, tc.noZeroRange, got, tc.want)
		}
		img.Close()
	}
}

// On a real file, zeroing without unmap keeps the blocks allocated but
// does not write them as data: they become unwritten extents, which
// SEEK_DATA skips. Where the file system lacks ZERO_RANGE, ZeroFast
// fails instead and a plain zeroing writes data.
func TestWriteZeroesKeepsAllocation(t *testing.T) {
	const size = 1 << 20
	name := create(t, size, "")
	img := open(t, name, block.OpenOptions{Format: "raw"})
	if _, err := img.WriteAt(bytes.Repeat([]byte{0xaa}, size), 0); err != nil {
		t.Fatal(err)
	}
	if err := img.Flush(); err != nil {
		t.Fatal(err)
	}
	before := blocks(t, name)
	fastErr := img.WriteZeroes(0, size, block.ZeroFast)
	if fastErr == nil {
		// Before anything reads the range: reading unwritten extents
		// fills the page cache, which SEEK_DATA counts as data.
		f, err := os.Open(name)
		if err != nil {
			t.Fatal(err)
		}
		if off, err := unix.Seek(int(f.Fd()), 0, unix.SEEK_DATA); err == nil {
			t.Errorf("the zeroed range was written as data: SEEK_DATA from 0 found data at %d", off)
		}
		f.Close()
	}
	b := make([]byte, size)
	if _, err := img.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	if fastErr != nil {
		if !errors.Is(fastErr, block.ErrNotSupported) || !bytes.Equal(b, bytes.Repeat([]byte{0xaa}, size)) {
			t.Fatalf("ZeroFast without ZERO_RANGE: %v, data changed: %v", fastErr, b[0] != 0xaa)
		}
		if err := img.WriteZeroes(0, size, 0); err != nil {
			t.Fatal(err)
		}
		img.ReadAt(b, 0)
		if !bytes.Equal(b, make([]byte, size)) {
			t.Error("zeroing by writing left data")
		}
		return
	}
	if !bytes.Equal(b, make([]byte, size)) {
		t.Fatal("zeroed range does not read as zeros")
	}
	if after := blocks(t, name); after < before {
		t.Errorf("zeroing without unmap freed space: %d blocks before, %d after", before, after)
	}
	// With unmap the space is freed.
	if err := img.WriteZeroes(0, size, block.ZeroMayUnmap); err != nil {
		t.Fatal(err)
	}
	if after := blocks(t, name); after >= before {
		t.Errorf("zeroing with unmap kept the space: %d blocks before, %d after", before, after)
	}
}

func blocks(t *testing.T, name string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(name, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks
}

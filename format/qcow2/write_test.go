package qcow2_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"vdisk/block"
	"vdisk/format/qcow2"
)

func createOpts(t testing.TB, opts string, size int64) block.Options {
	t.Helper()
	pairs, err := block.SplitOptionString(opts)
	if err != nil {
		t.Fatal(err)
	}
	if size >= 0 {
		pairs = append(pairs, [2]string{"size", fmt.Sprint(size)})
	}
	o, err := block.ParseOptions(qcow2.Format.CreateOptions, pairs)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func vdiskCreate(t testing.TB, name, opts string, size int64) {
	t.Helper()
	if err := block.Create(name, "qcow2", createOpts(t, opts, size)); err != nil {
		t.Fatalf("create %s (%s): %v", name, opts, err)
	}
}

// mirror applies the same operations to a qcow2 image and a raw file.
type mirror struct {
	t      *testing.T
	img    block.Image
	raw    *os.File
	size   int64
	cs     int64
	zeroCl bool // whole discarded clusters read as zeros
	rng    *rand.Rand
}

func (m *mirror) write(off int64, p []byte) {
	if _, err := m.img.WriteAt(p, off); err != nil {
		m.t.Fatalf("write %d+%d: %v", off, len(p), err)
	}
	if _, err := m.raw.WriteAt(p, off); err != nil {
		m.t.Fatal(err)
	}
}

func (m *mirror) zeroRaw(off, n int64) {
	if n > 0 {
		if _, err := m.raw.WriteAt(make([]byte, n), off); err != nil {
			m.t.Fatal(err)
		}
	}
}

func (m *mirror) step() {
	r := m.rng
	op := r.Intn(20)
	off := r.Int63n(m.size)
	n := min(m.size-off, r.Int63n(3*m.cs)+1)
	switch {
	case op < 10:
		p := make([]byte, n)
		if r.Intn(4) == 0 {
			// cluster aligned
			off = off &^ (m.cs - 1)
			n = min(m.size-off, m.cs*int64(1+r.Intn(4)))
			p = make([]byte, n)
		}
		r.Read(p)
		m.write(off, p)
	case op < 13:
		if err := m.img.Discard(off, n); err != nil {
			m.t.Fatalf("discard: %v", err)
		}
		if m.zeroCl {
			s := (off + m.cs - 1) &^ (m.cs - 1)
			e := (off + n) &^ (m.cs - 1)
			if off+n == m.size {
				e = off + n
			}
			if e > s {
				m.zeroRaw(s, e-s)
			}
		}
	case op < 16:
		flags := block.ZeroFlags(0)
		if r.Intn(2) == 0 {
			flags = block.ZeroMayUnmap
		}
		if err := m.img.WriteZeroes(off, n, flags); err != nil {
			m.t.Fatalf("write zeroes: %v", err)
		}
		m.zeroRaw(off, n)
	case op < 17:
		if err := m.img.Flush(); err != nil {
			m.t.Fatalf("flush: %v", err)
		}
	case op < 18:
		rs, ok := m.img.(block.Resizer)
		if !ok {
			return
		}
		ns := m.size + (r.Int63n(8*m.cs)+512)&^511
		shrink := r.Intn(3) == 0 && m.size > 4*m.cs
		if shrink {
			ns = m.size - (r.Int63n(2*m.cs)+512)&^511
		}
		if err := rs.Resize(ns, shrink); err != nil {
			m.t.Fatalf("resize %d->%d: %v", m.size, ns, err)
		}
		if err := m.raw.Truncate(ns); err != nil {
			m.t.Fatal(err)
		}
		m.size = ns
	default:
		got := make([]byte, n)
		if _, err := m.img.ReadAt(got, off); err != nil {
			m.t.Fatalf("read: %v", err)
		}
		want := make([]byte, n)
		if _, err := m.raw.ReadAt(want, off); err != nil {
			m.t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			m.t.Fatalf("read %d+%d differs from the mirror", off, n)
		}
	}
}

func runMirror(t *testing.T, name, rawName string, cs int64, zeroCl bool, steps int, seed int64) {
	img, err := block.Open(name, block.OpenOptions{Format: "qcow2"})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.OpenFile(rawName, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	m := &mirror{t: t, img: img, raw: raw, size: img.Size(), cs: cs, zeroCl: zeroCl, rng: rand.New(rand.NewSource(seed))}
	for i := 0; i < steps; i++ {
		m.step()
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	qemuCheck(t, name)
	run(t, "qemu-img", "compare", "-q", "-f", "qcow2", "-F", "raw", name, rawName)
}

func TestWriteMirror(t *testing.T) {
	cases := []struct {
		opts string
		cs   int64
	}{
		{"", 65536}, {"cluster_size=512,refcount_bits=1", 512}, {"cluster_size=4k", 4096},
		{"cluster_size=4k,refcount_bits=64", 4096}, {"compat=0.10,cluster_size=4k", 4096},
		{"extended_l2=on,cluster_size=16k", 16384}, {"lazy_refcounts=on,cluster_size=4k", 4096},
		{"cluster_size=2M", 2 << 20}, {"preallocation=metadata,cluster_size=4k", 4096},
		{"cluster_size=512,refcount_bits=8", 512},
	}
	for i, c := range cases {
		t.Run(c.opts, func(t *testing.T) {
			dir := t.TempDir()
			name := filepath.Join(dir, "w.qcow2")
			rawName := filepath.Join(dir, "w.raw")
			size := 64 * c.cs
			if c.cs >= 1<<20 {
				size = 8 * c.cs
			}
			vdiskCreate(t, name, c.opts, size)
			qemuCheck(t, name)
			if err := os.WriteFile(rawName, make([]byte, size), 0o644); err != nil {
				t.Fatal(err)
			}
			steps := 300
			if c.cs >= 1<<20 || raceEnabled {
				steps = 80
			}
			runMirror(t, name, rawName, c.cs, true, steps, int64(i))
		})
	}
}

func TestWriteMirrorBacking(t *testing.T) {
	for _, c := range []struct {
		opts, baseFmt string
		cs            int64
	}{
		{"compat=1.1,cluster_size=4k", "qcow2", 4096}, {"compat=0.10,cluster_size=4k", "qcow2", 4096},
		// Partial writes allocate only the subclusters they touch; the
		// rest of the cluster still reads from the base.
		{"compat=1.1,extended_l2=on,cluster_size=16k", "qcow2", 16384},
		{"compat=1.1,cluster_size=4k", "raw", 4096}, {"compat=0.10,cluster_size=64k", "raw", 65536},
	} {
		t.Run(c.baseFmt+"/"+c.opts, func(t *testing.T) {
			dir := t.TempDir()
			base := filepath.Join(dir, "base."+c.baseFmt)
			if c.baseFmt == "raw" {
				run(t, "qemu-img", "create", "-q", "-f", "raw", base, "256k")
			} else {
				run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", base, "256k")
			}
			qemuIO(t, base, c.baseFmt, "write -P 0x5a 0 256k")
			name := filepath.Join(dir, "top.qcow2")
			vdiskCreate(t, name, c.opts+",backing_file="+filepath.Base(base)+",backing_fmt="+c.baseFmt, -1)
			rawName := filepath.Join(dir, "top.raw")
			run(t, "qemu-img", "convert", "-O", "raw", base, rawName)
			runMirror(t, name, rawName, c.cs, !strings.Contains(c.opts, "0.10"), 300, 7)
		})
	}
}

func TestWriteMirrorSnapshots(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "s.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", name, "256k")
	qemuIO(t, name, "qcow2", "write -P 1 0 128k", "write -c -P 2 128k 8k")
	run(t, "qemu-img", "snapshot", "-c", "one", name)
	qemuIO(t, name, "qcow2", "write -P 3 64k 64k")
	run(t, "qemu-img", "snapshot", "-c", "two", name)
	rawName := filepath.Join(dir, "s.raw")
	run(t, "qemu-img", "convert", "-O", "raw", name, rawName)
	snapRaw := filepath.Join(dir, "one.raw")
	run(t, "qemu-img", "convert", "-O", "raw", "-l", "snapshot.name=one", name, snapRaw)
	// Resizes included: version 3 images with snapshots grow and shrink,
	// as in QEMU.
	runMirror(t, name, rawName, 4096, true, 300, 3)
	// The snapshots still hold their data, and applying one brings back
	// its size and content.
	out := filepath.Join(dir, "one-after.raw")
	run(t, "qemu-img", "convert", "-O", "raw", "-l", "snapshot.name=one", name, out)
	// qemu-img convert -l gives the current virtual size; the snapshot's
	// own size is 256k.
	run(t, "cmp", "-n", "262144", snapRaw, out)
	run(t, "qemu-img", "snapshot", "-a", "one", name)
	qemuCheck(t, name)
	run(t, "qemu-img", "compare", "-q", "-f", "qcow2", "-F", "raw", name, snapRaw)
}

func TestConcurrent(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "c.qcow2")
	vdiskCreate(t, name, "cluster_size=4k", 4<<20)
	img, err := block.Open(name, block.OpenOptions{Format: "qcow2"})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	// Two writers to each half of the same unallocated clusters.
	for c := int64(0); c < 64; c++ {
		for half := int64(0); half < 2; half++ {
			wg.Add(1)
			go func(c, half int64) {
				defer wg.Done()
				p := bytes.Repeat([]byte{byte(c*2 + half + 1)}, 2048)
				if _, err := img.WriteAt(p, c*4096+half*2048); err != nil {
					t.Error(err)
				}
			}(c, half)
		}
	}
	// Readers and writers elsewhere at the same time.
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			r := rand.New(rand.NewSource(int64(g)))
			buf := make([]byte, 8192)
			for i := 0; i < 100; i++ {
				off := (1<<20 + int64(g)*(256<<10)) + r.Int63n(256<<10-8192)
				if i%2 == 0 {
					if _, err := img.WriteAt(buf, off); err != nil {
						t.Error(err)
					}
				} else if _, err := img.ReadAt(buf, off); err != nil {
					t.Error(err)
				}
				if i%37 == 0 {
					img.Flush()
				}
			}
		}(g)
	}
	wg.Wait()
	got := make([]byte, 64*4096)
	if _, err := img.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	for c := 0; c < 64; c++ {
		for half := 0; half < 2; half++ {
			b := got[c*4096+half*2048 : c*4096+half*2048+2048]
			if !bytes.Equal(b, bytes.Repeat([]byte{byte(c*2 + half + 1)}, 2048)) {
				t.Fatalf("cluster %d half %d lost a concurrent write", c, half)
			}
		}
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	qemuCheck(t, name)
}

// Allocating writes write their data without the metadata lock. A write
// of two whole unallocated clusters races a small write into the first,
// next to readers, flushes, zeroing and discards elsewhere: the result is
// one of the two orders, and no cluster is allocated twice (the small
// write waits for the big one to link its clusters, then writes in place).
func TestConcurrentAllocatingWrites(t *testing.T) {
	const cs, clusters = 4096, 256
	name := filepath.Join(t.TempDir(), "a.qcow2")
	vdiskCreate(t, name, "cluster_size=4k", 2*clusters*cs)
	// Slow data writes, so that the writes overlap in time.
	img := openWrapped(t, name, func(f block.File) block.File { return &slowFile{File: f, min: 2 * cs, delay: time.Millisecond} })
	big := func(c int) []byte { return bytes.Repeat([]byte{byte(c + 1)}, 2*cs) }
	small := bytes.Repeat([]byte{0xff}, 1024)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for c := 0; c < clusters; c += 2 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			// Two clusters in one write: a run allocated in one go.
			if _, err := img.WriteAt(big(c), int64(c)*cs); err != nil {
				t.Error(err)
			}
		}()
		go func() {
			defer wg.Done()
			if _, err := img.WriteAt(small, int64(c)*cs+1024); err != nil {
				t.Error(err)
			}
		}()
	}
	var bg sync.WaitGroup
	for g := 0; g < 4; g++ {
		bg.Add(1)
		go func() {
			defer bg.Done()
			r := rand.New(rand.NewSource(int64(g)))
			buf := make([]byte, 3*cs)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				var err error
				switch {
				case g == 0 && i%8 == 0:
					err = img.Flush()
				case g == 1:
					// The upper half: zeroed and discarded meanwhile.
					off := int64(clusters+r.Intn(clusters-4)) * cs
					if i%2 == 0 {
						err = img.WriteZeroes(off, 3*cs, block.ZeroMayUnmap)
					} else {
						err = img.Discard(off, 2*cs)
					}
				default:
					_, err = img.ReadAt(buf, r.Int63n(clusters-3)*cs)
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	bg.Wait()
	got := make([]byte, 2*cs)
	for c := 0; c < clusters; c += 2 {
		if _, err := img.ReadAt(got, int64(c)*cs); err != nil {
			t.Fatal(err)
		}
		smallLast := big(c)
		copy(smallLast[1024:], small)
		if !bytes.Equal(got, big(c)) && !bytes.Equal(got, smallLast) {
			t.Fatalf("clusters %d-%d hold neither order of the writes (bytes %d, %d, %d)", c, c+1, got[0], got[1024], got[cs])
		}
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	qemuCheck(t, name)
	// Header, refcount table and block, L1 and L2 table, and the data:
	// a cluster allocated twice (then freed) would lie beyond.
	if end := qemuCheckCounts(t, name).ImageEndOffset; end > (5+clusters)*cs {
		t.Errorf("image end offset %d: more clusters allocated than written", end)
	}
}

// slowFile delays writes of at least min bytes, as a slow disk would.
type slowFile struct {
	block.File
	min   int
	delay time.Duration
}

func (f *slowFile) WriteAt(p []byte, off int64) (int, error) {
	if len(p) >= f.min {
		time.Sleep(f.delay)
	}
	return f.File.WriteAt(p, off)
}

// TestRefcountGrowth fills an image whose refcount table and blocks cover
// little (512-byte clusters, 64-bit refcounts), so both grow repeatedly,
// and the L1 table grows with resizes.
func TestRefcountGrowth(t *testing.T) {
	for _, o := range []string{"cluster_size=512,refcount_bits=64", "cluster_size=512,refcount_bits=1,compat=1.1", "cluster_size=512,compat=0.10"} {
		t.Run(o, func(t *testing.T) {
			dir := t.TempDir()
			name := filepath.Join(dir, "g.qcow2")
			vdiskCreate(t, name, o, 1<<20)
			img, err := block.Open(name, block.OpenOptions{Format: "qcow2"})
			if err != nil {
				t.Fatal(err)
			}
			if err := img.(block.Resizer).Resize(6<<20, false); err != nil {
				t.Fatal(err)
			}
			want := make([]byte, 6<<20)
			rand.New(rand.NewSource(5)).Read(want)
			for off := 0; off < len(want); off += 96 << 10 {
				end := min(off+96<<10, len(want))
				if _, err := img.WriteAt(want[off:end], int64(off)); err != nil {
					t.Fatal(err)
				}
			}
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}
			qemuCheck(t, name)
			if got := qemuRaw(t, name); !bytes.Equal(got, want) {
				t.Fatal("content differs")
			}
		})
	}
}

// fixedFile is a container that cannot grow, like an NBD export.
type fixedFile struct {
	block.File
	size int64
}

func (f *fixedFile) WriteAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > f.size {
		return 0, fmt.Errorf("write at %d+%d beyond the fixed end %d", off, len(p), f.size)
	}
	return f.File.WriteAt(p, off)
}

func (f *fixedFile) Truncate(n int64) error {
	if n > f.size {
		return fmt.Errorf("cannot grow to %d", n)
	}
	return nil
}

// Clusters freed by a discard are reused by the writes that follow in the
// same session, before the file would grow: the file keeps its size, and
// a qcow2 file on a container of fixed size (qemu-nbd, as mkfs does it:
// discard everything, then write) keeps working.
func TestDiscardedClustersReused(t *testing.T) {
	name := filepath.Join(t.TempDir(), "r.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "preallocation=metadata", name, "8M")
	st, err := os.Stat(name)
	if err != nil {
		t.Fatal(err)
	}
	img := openWrapped(t, name, func(f block.File) block.File { return &fixedFile{File: f, size: st.Size()} })
	data := bytes.Repeat([]byte{0x5a}, 3<<20)
	for round := 0; round < 3; round++ {
		if err := img.Discard(0, 8<<20); err != nil {
			t.Fatal(err)
		}
		if _, err := img.WriteAt(data, int64(round)<<20); err != nil {
			t.Fatalf("round %d: write after discard: %v", round, err)
		}
		if _, err := img.WriteAt(data[:4096], 7<<20+512); err != nil {
			t.Fatalf("round %d: partial write after discard: %v", round, err)
		}
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	if st2, _ := os.Stat(name); st2.Size() != st.Size() {
		t.Fatalf("file grew from %d to %d", st.Size(), st2.Size())
	}
	qemuCheck(t, name)
	qemuIO(t, name, "qcow2", "read -P 0 0 2M", "read -P 0x5a 2M 3M", "read -P 0 5M 2M", "read -P 0 7M 512",
		"read -P 0x5a 7340544 4096", "read -P 0 7344640 1043968")
}

// TestExtendedL2PartialWritesLikeQemu makes the same small writes to two
// overlays with subclusters, one through qemu-io and one through vdisk:
// both must allocate the same subclusters (qemu-img map, which includes
// host offsets, is identical) and read the same.
func TestExtendedL2PartialWritesLikeQemu(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "1M")
	qemuIO(t, base, "qcow2", "write -P 0x5a 0 1M")
	writes := []string{"write -P 1 8k 4k", "write -P 2 101k 1k", "write -P 3 200k 130k", "write -P 4 600k 512",
		"write -z 196k 4k", "write -z 205k 3k", "write -z 700k 1k", "write -z 126k 4k"}
	var maps []string
	for _, who := range []string{"qemu", "vdisk"} {
		name := filepath.Join(dir, who+".qcow2")
		run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "extended_l2=on", "-b", "base.qcow2", "-F", "qcow2", name)
		if who == "qemu" {
			qemuIO(t, name, "qcow2", writes...)
		} else {
			img, err := block.Open(name, block.OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range writes {
				var pat byte
				var offS, nS string
				zero := strings.HasPrefix(w, "write -z")
				if zero {
					fmt.Sscanf(w, "write -z %s %s", &offS, &nS)
				} else {
					fmt.Sscanf(w, "write -P %d %s %s", &pat, &offS, &nS)
				}
				off, _ := block.ParseSize(offS)
				n, _ := block.ParseSize(nS)
				var err error
				if zero {
					err = img.WriteZeroes(off, n, 0)
				} else {
					_, err = img.WriteAt(bytes.Repeat([]byte{pat}, int(n)), off)
				}
				if err != nil {
					t.Fatalf("%s: %v", w, err)
				}
			}
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}
		}
		qemuCheck(t, name)
		maps = append(maps, run(t, "qemu-img", "map", "--output=json", name))
	}
	if maps[0] != maps[1] {
		t.Fatalf("qemu-img map differs:\nqemu:\n%s\nvdisk:\n%s", maps[0], maps[1])
	}
	run(t, "qemu-img", "compare", filepath.Join(dir, "qemu.qcow2"), filepath.Join(dir, "vdisk.qcow2"))
}

// failNthWrite fails the nth write to the file (counting from 1) with EIO,
// as a failing disk would.
type failNthWrite struct {
	block.File
	n     int32
	count atomic.Int32
}

func (f *failNthWrite) WriteAt(p []byte, off int64) (int, error) {
	if f.count.Add(1) == f.n {
		return 0, fmt.Errorf("injected write failure at %#x: %w", off, syscall.EIO)
	}
	return f.File.WriteAt(p, off)
}

// A write that fails leaks nothing: neither the whole clusters it
// allocated first, to write later without the metadata lock, when its
// partial last cluster fails, nor that cluster, nor a compressed stream's
// bytes.
func TestFailedWriteFreesAllocatedClusters(t *testing.T) {
	const cs = 4096
	for _, tc := range []struct {
		name  string
		write func(img block.Image, fill byte) error
		check []string // qemu-io commands after the write was repeated
	}{
		{"runs", func(img block.Image, fill byte) error {
			_, err := img.WriteAt(bytes.Repeat([]byte{fill}, 4*cs+512), 0)
			return err
		}, []string{"read -P 2 0 16896", "read -P 0 16896 3584"}},
		{"compressed", func(img block.Image, fill byte) error {
			return img.(block.CompressedWriter).WriteCompressed(bytes.Repeat([]byte{fill}, cs), cs)
		}, []string{"read -P 0 0 4096", "read -P 2 4096 4096"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := filepath.Join(t.TempDir(), "w.qcow2")
			vdiskCreate(t, name, "cluster_size=4k", 1<<20)
			// The first write of the session is the partial cluster's
			// data, or the compressed stream.
			img := openWrapped(t, name, func(f block.File) block.File { return &failNthWrite{File: f, n: 1} })
			if err := tc.write(img, 1); !errors.Is(err, syscall.EIO) {
				t.Fatalf("write: got %v, want the injected failure", err)
			}
			res, err := img.(block.Checker).Check(block.RepairNone)
			if err != nil {
				t.Fatal(err)
			}
			if res.Leaks != 0 || res.Corruptions != 0 {
				t.Fatalf("after the failed write: %d leaks, %d corruptions\n%s", res.Leaks, res.Corruptions, strings.Join(res.Messages, "\n"))
			}
			// Clusters past the end of the file are not checked: the same
			// write, now successful, brings them inside.
			if err := tc.write(img, 2); err != nil {
				t.Fatal(err)
			}
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}
			qemuCheck(t, name)
			qemuIO(t, name, "qcow2", tc.check...)
		})
	}
}

// A damaged image whose refcounts claim more than 2^20 clusters past the
// end of the file (refcount blocks of 1-bit refcounts, all ones): as in
// QEMU, the allocator passes over them to the first free cluster (check
// leaves refcounts past the end alone, so nothing else would), and
// qemu-img check of the result agrees with vdisk's.
func TestAllocPastClaimedClusters(t *testing.T) {
	const cs, blocks = 4096, 33 // each block covers 8*cs clusters
	name := filepath.Join(t.TempDir(), "p.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4k,refcount_bits=1", name, "64M")
	// qemu-img's layout: header, refcount table, refcount block, L1.
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	if rt, rb := binary.BigEndian.Uint64(b[48:]), binary.BigEndian.Uint64(b[cs:]); rt != cs || rb != 2*cs {
		t.Fatalf("unexpected layout: refcount table at %#x, first block at %#x", rt, rb)
	}
	// The 32 more blocks follow the L1 table.
	b = append(b, make([]byte, (3+blocks)*cs-len(b))...)
	for i := int64(0); i < blocks; i++ {
		off := int64(2 * cs)
		if i > 0 {
			off = (3 + i) * cs
		}
		binary.BigEndian.PutUint64(b[cs+8*i:], uint64(off))
		copy(b[off:off+cs], bytes.Repeat([]byte{0xff}, cs))
	}
	if err := os.WriteFile(name, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if claimed := int64(blocks)*8*cs - int64(len(b))/cs; claimed <= 1<<20 {
		t.Fatalf("only %d clusters claimed past the end", claimed)
	}
	img := openRW(t, name)
	if _, err := img.WriteAt(bytes.Repeat([]byte{1}, 64<<10), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := img.WriteAt(bytes.Repeat([]byte{2}, cs), 32<<20); err != nil {
		t.Fatal(err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	q := qemuCheckCounts(t, name)
	v := checkImage(t, name, block.RepairNone)
	if q.Corruptions != 0 || q.CheckErrors != 0 || v.Corruptions != q.Corruptions || v.Leaks != q.Leaks || v.ImageEndOffset != q.ImageEndOffset {
		t.Fatalf("qemu-img check: %+v; vdisk check: %d corruptions, %d leaks, end %d", q, v.Corruptions, v.Leaks, v.ImageEndOffset)
	}
	qemuIO(t, name, "qcow2", "read -P 1 0 64k", "read -P 0 64k 32704k", "read -P 2 32M 4k")
}

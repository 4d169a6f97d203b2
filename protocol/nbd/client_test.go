package nbd_test

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"vdisk/block"
	_ "vdisk/drivers"
	nbdexport "vdisk/export/nbd"
	"vdisk/format/mem"
	nbdc "vdisk/protocol/nbd"
)

// startTool runs an NBD server program and returns once its socket accepts.
func startTool(t *testing.T, sock string, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("%s stderr:\n%s", name, stderr.String())
		}
	})
	waitSocket(t, "unix", sock)
}

func waitSocket(t *testing.T, network, addr string) {
	t.Helper()
	// Generous: qemu-nbd and nbdkit start slowly on a loaded CI machine.
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		if c, err := net.Dial(network, addr); err == nil {
			c.Close()
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("server at %s did not come up", addr)
}

// exercise reads, writes, zeroes, trims and maps an export of at least
// 4 MiB through block.Open, the way every vdisk command would.
func exercise(t *testing.T, uri string) {
	t.Helper()
	img, err := block.Open(uri, block.OpenOptions{Format: "raw"})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	size := img.Size()
	if size < 4<<20 {
		t.Fatalf("size %d", size)
	}
	data := make([]byte, 1<<20)
	rand.New(rand.NewSource(1)).Read(data)
	if _, err := img.WriteAt(data, 1<<20); err != nil {
		t.Fatal(err)
	}
	// Concurrent readers on one connection.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			got := make([]byte, 64<<10)
			o := int64(i) * 64 << 10
			if _, err := img.ReadAt(got, 1<<20+o); err != nil {
				errs <- err
				return
			}
			if !bytes.Equal(got, data[o:o+64<<10]) {
				errs <- fmt.Errorf("reader %d: data differs", i)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if err := img.WriteZeroes(1<<20, 256<<10, block.ZeroMayUnmap); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 1<<20)
	if _, err := img.ReadAt(got, 1<<20); err != nil {
		t.Fatal(err)
	}
	if !block.IsZero(got[:256<<10]) || !bytes.Equal(got[256<<10:], data[256<<10:]) {
		t.Fatal("content after write zeroes differs")
	}
	if err := img.Flush(); err != nil {
		t.Fatal(err)
	}
	exts, err := img.BlockStatus(0, size)
	if err != nil {
		t.Fatal(err)
	}
	var covered int64
	dataSeen := false
	for _, e := range exts {
		if e.Offset != covered {
			t.Fatalf("extents not contiguous: %+v", exts)
		}
		covered += e.Length
		if e.Status&block.StatusData != 0 && e.Offset < 2<<20 && e.Offset+e.Length > 1<<20+256<<10 {
			dataSeen = true
		}
	}
	if covered != size || !dataSeen {
		t.Fatalf("block status %+v does not cover the written data", exts)
	}
	// Past the end.
	if _, err := img.WriteAt(data[:512], size-256); !errors.Is(err, block.ErrOutOfRange) {
		t.Fatalf("write past end: %v", err)
	}
}

func TestAgainstQemuNBD(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "a.raw")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Truncate(file, 8<<20)
	sock := filepath.Join(dir, "s")
	startTool(t, sock, "qemu-nbd", "-f", "raw", "-t", "-k", sock, "-x", "disk", file)
	exercise(t, "nbd+unix:///disk?socket="+sock)
}

func TestAgainstNbdkitMemory(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s")
	startTool(t, sock, "nbdkit", "-f", "-U", sock, "memory", "8M")
	exercise(t, "nbd+unix:///?socket="+sock)
}

func TestAgainstNbdkitFile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "a.raw")
	os.WriteFile(file, nil, 0o644)
	os.Truncate(file, 8<<20)
	sock := filepath.Join(dir, "s")
	startTool(t, sock, "nbdkit", "-f", "-U", sock, "file", file)
	exercise(t, "nbd+unix:///?socket="+sock)
}

// serveMem runs vdisk's own server on a TCP port with a RAM image.
func serveMem(t *testing.T, size int64) (string, *nbdexport.Server) {
	return serveMemMax(t, size, 0)
}

func serveMemMax(t *testing.T, size int64, maxPayload uint32) (string, *nbdexport.Server) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &nbdexport.Server{Exports: []*nbdexport.Export{{Name: "m", Image: mem.New(size)}}, MaxPayload: maxPayload}
	go srv.Serve(l)
	t.Cleanup(srv.Shutdown)
	return "nbd://" + l.Addr().String() + "/m", srv
}

func TestAgainstVdiskServer(t *testing.T) {
	uri, _ := serveMem(t, 8<<20)
	exercise(t, uri)
}

func TestLargeIOSplits(t *testing.T) {
	// The server advertises 1 MiB requests, so the client must split.
	uri, _ := serveMemMax(t, 8<<20, 1<<20)
	f, err := nbdc.Dial(uri)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data := make([]byte, 7<<20+3)
	rand.New(rand.NewSource(2)).Read(data)
	if _, err := f.WriteAt(data, 5); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if _, err := f.ReadAt(got, 5); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("large read differs")
	}
	if err := f.Truncate(8 << 20); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(1 << 20); err == nil {
		t.Fatal("truncate to another size succeeded")
	}
}

func TestUnknownExport(t *testing.T) {
	uri, _ := serveMem(t, 1<<20)
	_, err := nbdc.Dial(uri + "x")
	if err == nil {
		t.Fatal("unknown export opened")
	}
}

func TestParseURI(t *testing.T) {
	for _, c := range []struct {
		in, network, addr, export string
		tls                       bool
	}{
		{"nbd://h", "tcp", "h:10809", "", false},
		{"nbd://h:99/a/b", "tcp", "h:99", "a/b", false},
		{"nbd+unix:///e?socket=/x/s", "unix", "/x/s", "e", false},
		{"nbds://[::1]:5/e?tls-ca=/ca", "tcp", "[::1]:5", "e", true},
	} {
		tg, err := nbdc.ParseURI(c.in)
		if err != nil {
			t.Fatalf("%s: %v", c.in, err)
		}
		if tg.Network != c.network || tg.Address != c.addr || tg.Export != c.export || tg.TLS != c.tls {
			t.Errorf("%s: got %+v", c.in, tg)
		}
	}
	for _, bad := range []string{"nbd+unix:///e", "nbd+unix://host/e?socket=/s", "http://x"} {
		if _, err := nbdc.ParseURI(bad); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
}

// An nbdkit export whose filter fails every request that breaks its
// block size constraints (minimum 4096, maximum 64 KiB) with EINVAL:
// unaligned reads, writes and zeroings through vdisk's client give the
// same bytes as on a local buffer, concurrent unaligned writes sharing
// blocks lose nothing, and an unaligned trim leaves partial blocks alone.
func TestBlockSizeConstraints(t *testing.T) {
	const size = 1 << 20
	sock := filepath.Join(t.TempDir(), "s")
	startTool(t, sock, "nbdkit", "-f", "-U", sock, "--filter=blocksize-policy", "memory", fmt.Sprint(size),
		"blocksize-minimum=4096", "blocksize-preferred=16384", "blocksize-maximum=65536", "blocksize-error-policy=error")
	f, err := nbdc.Dial("nbd+unix:///?socket=" + sock)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ref := make([]byte, size)
	check := func(what string) {
		t.Helper()
		got := make([]byte, size)
		if _, err := f.ReadAt(got, 0); err != nil {
			t.Fatalf("%s: read back: %v", what, err)
		}
		if i := firstDiff(got, ref); i >= 0 {
			t.Fatalf("%s: byte %d is %#x, want %#x", what, i, got[i], ref[i])
		}
	}
	rnd := rand.New(rand.NewSource(3))
	for i := 0; i < 200; i++ {
		off := rnd.Int63n(size)
		n := min(rnd.Int63n(200<<10)+1, size-off)
		if i%10 == 0 {
			n = min(rnd.Int63n(100)+1, size-off) // within one block
		}
		var what string
		switch i % 4 {
		case 0, 1:
			what = fmt.Sprintf("write %d+%d", off, n)
			p := make([]byte, n)
			rnd.Read(p)
			if _, err := f.WriteAt(p, off); err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			copy(ref[off:], p)
		case 2:
			what = fmt.Sprintf("zero %d+%d", off, n)
			if err := f.ZeroRange(off, n); err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			clear(ref[off : off+n])
		case 3:
			what = fmt.Sprintf("punch %d+%d", off, n)
			if err := f.PunchHole(off, n); err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			clear(ref[off : off+n])
		}
		// Unaligned reads of what was just changed, edges included.
		lo, hi := max(off-5, 0), min(off+n+5, size)
		got := make([]byte, hi-lo)
		if _, err := f.ReadAt(got, lo); err != nil {
			t.Fatalf("after %s: read %d+%d: %v", what, lo, hi-lo, err)
		}
		if j := firstDiff(got, ref[lo:hi]); j >= 0 {
			t.Fatalf("after %s: byte %d is %#x, want %#x", what, lo+int64(j), got[j], ref[lo+int64(j)])
		}
	}
	check("random I/O")

	// Writers of adjacent 100-byte pieces, all in the same few blocks:
	// without read-modify-writes kept apart, one undoes another.
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for w := 0; w < 64; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for k := 0; k < 8; k++ {
				off := int64(8192 + (k*64+w)*100)
				p := bytes.Repeat([]byte{byte(w + 1)}, 100)
				if _, err := f.WriteAt(p, off); err != nil {
					errs <- err
					return
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for w := 0; w < 64; w++ {
		for k := 0; k < 8; k++ {
			off := 8192 + (k*64+w)*100
			copy(ref[off:off+100], bytes.Repeat([]byte{byte(w + 1)}, 100))
		}
	}
	check("concurrent unaligned writes")

	// Trim is a hint: only the whole blocks inside go to the server.
	if err := f.Trim(100, 3*4096); err != nil {
		t.Fatal(err)
	}
	clear(ref[4096 : 3*4096])
	check("unaligned trim")
	if err := f.Trim(4097, 100); err != nil {
		t.Fatal(err)
	}
	check("trim inside one block")
	// Block status of an unaligned range starts and ends where asked.
	exts, err := f.MapData(4097, 3*4096)
	if err != nil || len(exts) == 0 || exts[0].Offset != 4097 {
		t.Fatalf("map: %+v %v", exts, err)
	}
	if last := exts[len(exts)-1]; last.Offset+last.Length != 4097+3*4096 {
		t.Fatalf("map ends at %d", last.Offset+last.Length)
	}
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// An export whose size is not a multiple of the server's minimum block
// size ends at its last whole block: the part of a block beyond it could
// be neither read nor written, as the server fails requests that do not
// cover whole blocks. Opening, probing, mapping and unaligned I/O all
// work on what remains.
func TestExportSizeNotWholeBlocks(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s")
	startTool(t, sock, "nbdkit", "-f", "-U", sock, "--filter=blocksize-policy", "data", "1 2 3 @900 4", "size=1000",
		"blocksize-minimum=512", "blocksize-error-policy=error")
	uri := "nbd+unix:///?socket=" + sock
	img, err := block.Open(uri, block.OpenOptions{})
	if err != nil {
		t.Fatalf("open (probing the format): %v", err)
	}
	defer img.Close()
	if img.Size() != 512 {
		t.Errorf("size %d, want 512", img.Size())
	}
	got := make([]byte, 512)
	if _, err := img.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if want := append([]byte{1, 2, 3}, make([]byte, 509)...); !bytes.Equal(got, want) {
		t.Errorf("read %x…, want 010203 then zeros", got[:8])
	}
	p := bytes.Repeat([]byte{0x5a}, 12)
	if _, err := img.WriteAt(p, 500); err != nil {
		t.Fatalf("unaligned write at the end: %v", err)
	}
	if _, err := img.ReadAt(got[:12], 500); err != nil || !bytes.Equal(got[:12], p) {
		t.Errorf("read back %x %v", got[:12], err)
	}
	f, err := nbdc.Dial(uri)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, r := range [][2]int64{{0, 512}, {1, 510}, {100, 412}} {
		exts, err := f.MapData(r[0], r[1])
		if err != nil {
			t.Errorf("map %d+%d: %v", r[0], r[1], err)
			continue
		}
		if len(exts) == 0 || exts[0].Offset != r[0] || exts[len(exts)-1].Offset+exts[len(exts)-1].Length != r[0]+r[1] {
			t.Errorf("map %d+%d: %+v", r[0], r[1], exts)
		}
	}
}

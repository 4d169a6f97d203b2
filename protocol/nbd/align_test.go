package nbd

import (
	"errors"
	"net"
	"sync"
	"testing"

	"vdisk/block"
	nbdexport "vdisk/export/nbd"
	"vdisk/format/mem"
	"vdisk/nbd"
)

func TestSetBlockSizes(t *testing.T) {
	for _, c := range []struct {
		lo, pref, hi       uint32
		payload, maxLength int64
	}{
		{1, 4096, 0xffffffff, nbd.MaxPayload, bigStep},
		{4096, 16384, 65536, 65536, 65536},
		{512, 4096, 3 << 19, 3 << 19, 3 << 19},
		{512, 4096, 1<<20 + 512, 1 << 20, 1<<20 + 512}, // payload in whole preferred blocks
		{4096, 4096, 4096, 4096, 4096},
		{1, 1 << 26, 1 << 30, nbd.MaxPayload, 1 << 30}, // preferred beyond the payload limit
	} {
		cl := &Client{}
		if err := cl.setBlockSizes(c.lo, c.pref, c.hi); err != nil {
			t.Fatalf("%d/%d/%d: %v", c.lo, c.pref, c.hi, err)
		}
		if cl.minBlock != int64(c.lo) || cl.maxPayload != c.payload || cl.maxLength != c.maxLength {
			t.Errorf("%d/%d/%d: min %d payload %d length %d, want %d %d", c.lo, c.pref, c.hi, cl.minBlock, cl.maxPayload, cl.maxLength, c.payload, c.maxLength)
		}
	}
	for _, c := range [][3]uint32{{0, 4096, 1 << 20}, {3, 4096, 1 << 20}, {128 << 10, 128 << 10, 1 << 20}, {4096, 4096, 2048}} {
		if err := (&Client{}).setBlockSizes(c[0], c[1], c[2]); err == nil {
			t.Errorf("%v accepted", c)
		}
	}
}

// lengths records the length of every zeroing and discard an image sees.
type lengths struct {
	block.Image
	mu    sync.Mutex
	zeros []int64
	trims []int64
}

func (l *lengths) WriteZeroes(off, n int64, f block.ZeroFlags) error {
	l.mu.Lock()
	l.zeros = append(l.zeros, n)
	l.mu.Unlock()
	return l.Image.WriteZeroes(off, n, f)
}

func (l *lengths) Discard(off, n int64) error {
	l.mu.Lock()
	l.trims = append(l.trims, n)
	l.mu.Unlock()
	return l.Image.Discard(off, n)
}

// WRITE_ZEROES and TRIM requests stay within the server's maximum block
// size (here 1 MiB, from vdisk's server told so), as the spec requires of
// WRITE_ZEROES without FAST_ZERO.
func TestZeroAndTrimWithinMaximum(t *testing.T) {
	img := &lengths{Image: mem.New(8 << 20)}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &nbdexport.Server{Exports: []*nbdexport.Export{{Name: "m", Image: img}}, MaxPayload: 1 << 20}
	go srv.Serve(l)
	t.Cleanup(srv.Shutdown)
	c, err := Dial("nbd://" + l.Addr().String() + "/m")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.ZeroRange(0, 5<<20); err != nil {
		t.Fatal(err)
	}
	if err := c.PunchHole(1<<20, 3<<20); err != nil {
		t.Fatal(err)
	}
	if err := c.Trim(0, 8<<20); err != nil {
		t.Fatal(err)
	}
	img.mu.Lock()
	defer img.mu.Unlock()
	var zeroed, trimmed int64
	for _, n := range img.zeros {
		if n > 1<<20 {
			t.Fatalf("a zeroing of %d bytes", n)
		}
		zeroed += n
	}
	for _, n := range img.trims {
		if n > 1<<20 {
			t.Fatalf("a trim of %d bytes", n)
		}
		trimmed += n
	}
	if zeroed != 8<<20 || trimmed != 8<<20 {
		t.Fatalf("zeroed %d, trimmed %d bytes", zeroed, trimmed)
	}
}

// An empty read or write covers no block, wherever it starts: it sends
// nothing, in particular no read-modify-write of the block it points into.
func TestEmptyUnalignedIO(t *testing.T) {
	c := &Client{name: "test", size: 8192, flags: nbd.FlagSendWriteZeroes, minBlock: 4096, maxPayload: 4096, maxLength: 4096,
		err: errors.New("a request was sent")}
	if _, err := c.WriteAt(nil, 100); err != nil {
		t.Errorf("empty write: %v", err)
	}
	if err := c.ZeroRange(100, 0); err != nil {
		t.Errorf("empty zeroing: %v", err)
	}
	if err := c.read(nil, 100); err != nil {
		t.Errorf("empty read: %v", err)
	}
}

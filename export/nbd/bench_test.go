package nbd

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"vdisk/block"
	_ "vdisk/format/raw"
	"vdisk/nbd"
	_ "vdisk/protocol/file"
)

// BenchmarkReadRaw streams 256 KiB structured reads of a raw file with
// data everywhere over a Unix socket, 16 requests in flight on each of
// 2 connections, much as nbdcopy reads an export.
func BenchmarkReadRaw(b *testing.B) {
	const size = 64 << 20
	const reqLen = 256 << 10
	dir := b.TempDir()
	path := filepath.Join(dir, "src.raw")
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i*7 + i>>12)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		b.Fatal(err)
	}
	img, err := block.Open(path, block.OpenOptions{Format: "raw", ReadOnly: true})
	if err != nil {
		b.Fatal(err)
	}
	defer img.Close()
	srv := &Server{Exports: []*Export{{Image: img}}}
	sock := filepath.Join(dir, "s.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() { srv.Serve(l); close(done) }()
	defer func() { srv.Shutdown(); <-done }()

	const conns = 2
	cls := make([]*client, conns)
	for i := range cls {
		c, err := net.Dial("unix", sock)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		cl := &client{t: &testing.T{}, c: c}
		var hello [18]byte
		io.ReadFull(c, hello[:])
		cl.goTo("", true)
		cls[i] = cl
	}
	b.SetBytes(size)
	b.ResetTimer()
	for it := 0; it < b.N; it++ {
		var wg sync.WaitGroup
		for ci, cl := range cls {
			wg.Add(2)
			n := size / reqLen / conns
			slots := make(chan struct{}, 16)
			go func() {
				defer wg.Done()
				for j := 0; j < n; j++ {
					slots <- struct{}{}
					off := uint64((j*conns + ci) * reqLen)
					cl.c.Write(nbd.AppendRequest(nil, nbd.Request{Type: nbd.CmdRead, Cookie: uint64(j), Offset: off, Length: reqLen}))
				}
			}()
			go func() {
				defer wg.Done()
				buf := make([]byte, reqLen+64)
				var h [nbd.StructuredReplySize]byte
				for j := 0; j < n; {
					if _, err := io.ReadFull(cl.c, h[:]); err != nil {
						b.Error(err)
						return
					}
					rh, err := nbd.ParseReply(h[:])
					if err != nil || !rh.Structured {
						b.Errorf("reply %+v %v", rh, err)
						return
					}
					if _, err := io.ReadFull(cl.c, buf[:rh.Length]); err != nil {
						b.Error(err)
						return
					}
					if rh.Flags&nbd.ReplyFlagDone != 0 {
						j++
						<-slots
					}
				}
			}()
		}
		wg.Wait()
	}
}

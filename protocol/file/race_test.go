package file_test

import (
	"sync"
	"testing"

	"vdisk/block"
	"vdisk/protocol/file"
)

// Two writers opening the same image at once never both get it: each
// takes its own lock bytes before it looks at the other's, so at least
// the later one sees the earlier (both may fail, as with QEMU).
func TestConcurrentWritersExclude(t *testing.T) {
	name := newImage(t)
	const rounds = 2000
	both := 0
	for range rounds {
		var (
			wg    sync.WaitGroup
			start = make(chan struct{})
			files [2]block.File
		)
		for i := range files {
			wg.Go(func() {
				<-start
				if f, err := file.Open(name, block.OpenFlags{}); err == nil {
					files[i] = f
				}
			})
		}
		close(start)
		wg.Wait()
		if files[0] != nil && files[1] != nil {
			both++
		}
		for _, f := range files {
			if f != nil {
				f.Close()
			}
		}
	}
	if both > 0 {
		t.Errorf("both writers opened the image in %d of %d rounds", both, rounds)
	}
}

package main

import (
	"fmt"
	"os"
	"sync"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"vdisk/block"
	"vdisk/imgtool"
)

func init() {
	var (
		of                   openFlags
		outFmt, opts, sparse string
		cacheMode            string
		progress, compress   bool
		outOfOrder, noCreate bool
		workers              int
	)
	cmd := &cobra.Command{
		Use:   "convert [-f FMT] [-O FMT] [-o OPTS] [-p] [-S SIZE] [-c] [-W] [-m N] [-n] [-t CACHE] [-U] SRC DST",
		Short: "Copy an image into a new image, possibly of another format",
		Long: `Copy the content of SRC into a new image DST of format -O (default raw),
keeping it sparse: runs of zeros of at least -S bytes (default 4K) are not
written. -c compresses where the target format supports it; -m sets the
number of parallel requests (default 8); -W lets writes complete out of
order; -n writes into an existing DST instead of creating it. The target
is flushed to stable storage before convert exits, unless -t unsafe (which
is what qemu-img convert does by default).`,
		Args: func(cmd *cobra.Command, args []string) error {
			if wantsHelp(opts) {
				return nil
			}
			return exactArgs(2)(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if outFmt == "" {
				outFmt = "raw"
			}
			if wantsHelp(opts) {
				f, err := block.Lookup(outFmt)
				if err != nil {
					return err
				}
				fmt.Print(imgtool.OptionHelp(f))
				return nil
			}
			sp, err := block.ParseSize(sparse)
			if err != nil {
				return usageError(cmd, "-S: %v", err)
			}
			if sp%512 != 0 || sp > 16<<20 {
				return usageError(cmd, "invalid sparse size '%s': it must be a multiple of 512 bytes up to 16M", sparse)
			}
			if workers < 1 || workers > imgtool.MaxWorkers {
				return usageError(cmd, "invalid number of parallel requests %d: allowed are 1 to %d", workers, imgtool.MaxWorkers)
			}
			if noCreate && opts != "" {
				return usageError(cmd, "-o has no effect with -n (the target is not created)")
			}
			unsafe := false
			switch cacheMode {
			case "unsafe":
				unsafe = true
			case "writeback", "writethrough", "none", "directsync":
			default:
				return usageError(cmd, "invalid cache mode '%s' for -t: use writeback (the default) or unsafe", cacheMode)
			}
			cs, err := of.cache()
			if err != nil {
				return err
			}
			o := imgtool.ConvertOptions{
				SrcFormat:     of.format,
				DstFormat:     outFmt,
				CreateOptions: opts,
				NoCreate:      noCreate,
				ForceShare:    of.forceShare,
				CacheSize:     cs,
				Unsafe:        unsafe,
				Copy: imgtool.CopyOptions{
					Sparse:     sp,
					Compress:   compress,
					OutOfOrder: outOfOrder,
					Workers:    workers,
				},
			}
			var bar *progressBar
			if progress && isTerminal(os.Stdout) {
				bar = &progressBar{}
				o.Copy.Progress = bar.update
				bar.update(0, 1)
			}
			err = imgtool.Convert(args[0], args[1], o)
			if bar != nil {
				bar.finish(err == nil)
			}
			return err
		},
	}
	of.register(cmd.Flags(), true)
	fs := cmd.Flags()
	fs.StringVarP(&outFmt, "target-format", "O", "", "format of the new image (default raw)")
	fs.StringVarP(&opts, "options", "o", "", "options of the target format ('-o help' lists them)")
	fs.BoolVarP(&progress, "progress", "p", false, "show progress on a terminal")
	fs.StringVarP(&sparse, "sparse-size", "S", "4k", "shortest run of zeros left unallocated; 0 allocates everything")
	fs.BoolVarP(&compress, "compress", "c", false, "write compressed clusters (target format must support it)")
	fs.BoolVarP(&outOfOrder, "out-of-order", "W", false, "allow writes to complete out of order")
	fs.IntVarP(&workers, "parallel", "m", imgtool.DefaultWorkers, "parallel requests (1-16)")
	fs.BoolVarP(&noCreate, "no-create", "n", false, "write into an existing target image")
	fs.StringVarP(&cacheMode, "cache", "t", "writeback", "target cache mode: writeback (data on disk when convert ends) or unsafe (no final flush, qemu-img convert's default)")
	rootCmd.AddCommand(cmd)
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// progressBar prints qemu-img's "    (12.34/100%)" line, rewritten in
// place, at most once per 1%.
type progressBar struct {
	mu      sync.Mutex
	last    int
	started bool
}

// update is called from several workers; it only ever moves forward.
func (p *progressBar) update(done, total int64) {
	if total <= 0 {
		return
	}
	pct := int(min(done, total) * 10000 / total)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.started && (pct <= p.last || (pct/100 == p.last/100 && pct != 10000)) {
		return
	}
	p.started, p.last = true, pct
	fmt.Printf("    (%d.%02d/100%%)\r", pct/100, pct%100)
}

func (p *progressBar) finish(ok bool) {
	if ok {
		p.update(1, 1)
	}
	fmt.Println()
}

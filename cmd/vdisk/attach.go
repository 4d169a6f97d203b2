package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"vdisk/attach/ctl"
	"vdisk/block"
)

func init() {
	var stateDir, format, unit, cacheSize, memSize string
	var readOnly, noPassthrough bool
	var meta metaCacheFlags
	var secbits int
	c := &cobra.Command{
		Use:   "attach [-f FMT] [-r] [-s SECBITS] [-u UNIT] [--cache-size N] FILE | --mem SIZE",
		Short: "Attach an image as a block device",
		Long: `Attach an image as a block device: the daemon serves the image as a
file through FUSE and binds a loop device to it. Prints the unit and the
device, e.g. "vd0 /dev/loop3". Starts the daemon when none is running.
The partitions of an MBR or GPT table on the image appear as
/dev/loop3p1, …: the kernel scans the table, and where it has no parser
for it the daemon registers them (see vdisk rescan after repartitioning).

  -r          read-only everywhere: image, FUSE file and loop device
  -s SECBITS  logical sector size 1<<SECBITS (9 = 512, 12 = 4096; larger
              ones as far as the kernel's loop driver presents them)
  -u UNIT     use this unit (vdN); a unit in use is an error (EBUSY)
  --mem SIZE  a RAM disk of SIZE bytes instead of a file`,
		Args: func(cmd *cobra.Command, args []string) error {
			if memSize != "" {
				if len(args) != 0 {
					return errors.New("--mem takes no FILE")
				}
				return nil
			}
			if len(args) != 1 {
				return errors.New("expecting one image FILE (or --mem SIZE)")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			a := ctl.AttachArgs{Format: format, ReadOnly: readOnly, SecBits: secbits, Unit: unit, NoPassthrough: noPassthrough}
			if cacheSize != "" {
				n, err := block.ParseSize(cacheSize)
				if err != nil || n < 0 {
					return fmt.Errorf("invalid --cache-size '%s'", cacheSize)
				}
				a.CacheSize = n
			}
			var mo block.OpenOptions
			if err := meta.apply(&mo); err != nil {
				return err
			}
			a.L2CacheSize, a.RefcountCacheSize = mo.L2CacheSize, mo.RefcountCacheSize
			if memSize != "" {
				n, err := block.ParseSize(memSize)
				if err != nil || n <= 0 {
					return fmt.Errorf("invalid --mem size '%s'", memSize)
				}
				a.MemSize = n
			} else {
				a.File = args[0]
				wd, err := os.Getwd()
				if err != nil {
					return err
				}
				a.Dir = wd
			}
			// The daemon asks the loop driver about the rest.
			if secbits != 0 && secbits < 9 {
				return fmt.Errorf("sector size 2^%d is not supported: the loop driver presents 512 bytes or more (-s 9 and up)", secbits)
			}
			if secbits > 30 {
				return fmt.Errorf("sector size 2^%d is not supported", secbits)
			}
			dir := ctl.StateDir(stateDir)
			c := ctl.NewClient(dir)
			if err := c.Ping(); errors.Is(err, ctl.ErrNoDaemon) {
				if err := startDaemon(dir, false); err != nil {
					return err
				}
				fmt.Fprintf(os.Stderr, "vdisk: no daemon was running; started one in the background (state directory %s)\n", dir)
			}
			u, err := c.Attach(a)
			if err != nil {
				return err
			}
			fmt.Printf("%s %s\n", u.Unit, u.Device)
			return nil
		},
	}
	addStateDirFlag(c, &stateDir)
	f := c.Flags()
	f.StringVarP(&format, "format", "f", "", "image format (default: probe)")
	f.BoolVarP(&readOnly, "read-only", "r", false, "attach read-only")
	f.IntVarP(&secbits, "secbits", "s", 0, "logical sector size as a power of two (9 = 512, 12 = 4096, up to what the loop driver accepts; 0 = 9)")
	f.StringVarP(&unit, "unit", "u", "", "unit to attach to (vdN)")
	f.StringVar(&cacheSize, "cache-size", "", "read cache size in bytes (suffixes k, M, G)")
	f.StringVar(&memSize, "mem", "", "attach a RAM disk of SIZE bytes")
	meta.register(f)
	f.BoolVar(&noPassthrough, "no-passthrough", false, "serve raw images in userspace instead of FUSE passthrough")
	rootCmd.AddCommand(c)
}

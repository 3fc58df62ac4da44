// Command ferretdb-mltrail runs FerretDB with its SQLite engine on a loopback port,
// so that mltrail's tests can talk to a MongoDB wire-protocol server without mongod.
//
// It embeds FerretDB's public ferretdb package because `go install` of FerretDB's own
// command builds a binary that panics at start-up: that command expects a generated
// build/version/version.txt, which the published module does not contain.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/FerretDB/FerretDB/ferretdb"
)

// loopbackHost is the only host the server may listen on, because a test server without
// authentication must never be reachable from another machine.
const loopbackHost = "127.0.0.1"

func main() {
	listenAddr := flag.String("listen-addr", "", "TCP address to listen on, as 127.0.0.1:PORT (required)")
	sqliteDir := flag.String("sqlite-dir", "", "existing directory for the SQLite database files (required)")
	logLevel := flag.String("log-level", "info", "minimum level of log records written to stderr: debug, info, warn or error")
	flag.Parse()

	if flag.NArg() > 0 {
		fail(2, fmt.Sprintf("unexpected arguments %q; pass only flags", flag.Args()))
	}

	if err := checkListenAddr(*listenAddr); err != nil {
		fail(2, err.Error())
	}

	dir, err := checkSQLiteDir(*sqliteDir)
	if err != nil {
		fail(2, err.Error())
	}

	var level slog.Level
	if err = level.UnmarshalText([]byte(*logLevel)); err != nil {
		fail(2, fmt.Sprintf("invalid -log-level %q: use debug, info, warn or error", *logLevel))
	}

	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	// FerretDB's SQLite engine takes a "file:" URI naming a directory, which must end with "/".
	sqliteURL := (&url.URL{Scheme: "file", Path: dir + "/"}).String()

	server, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: *listenAddr},
		Logger:    logger,
		Handler:   "sqlite",
		SQLiteURL: sqliteURL,
	})
	if err != nil {
		logger.Error("FerretDB failed to start", "listen_addr", *listenAddr, "sqlite_url", sqliteURL, "error", err)
		os.Exit(1)
	}

	// The launcher stops the server with SIGTERM. Cancelling the context lets FerretDB
	// close its connections and the SQLite databases before the process exits.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	logger.Info("FerretDB started", "uri", server.MongoDBURI(), "sqlite_url", sqliteURL)

	if err = server.Run(ctx); err != nil {
		logger.Error("FerretDB stopped with an error", "error", err)
		os.Exit(1)
	}

	logger.Info("FerretDB stopped")
}

// checkListenAddr returns an error unless addr is 127.0.0.1 with a port from 1 to 65535.
func checkListenAddr(addr string) error {
	if addr == "" {
		return errors.New("missing -listen-addr: pass 127.0.0.1:PORT")
	}

	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("invalid -listen-addr %q: %v; pass 127.0.0.1:PORT", addr, err)
	}

	if host != loopbackHost {
		return fmt.Errorf("invalid -listen-addr %q: host must be %s", addr, loopbackHost)
	}

	number, err := strconv.Atoi(port)
	if err != nil || number < 1 || number > 65535 {
		return fmt.Errorf("invalid -listen-addr %q: port must be a number from 1 to 65535", addr)
	}

	return nil
}

// checkSQLiteDir returns dir as an absolute path, or an error unless it is an existing directory.
func checkSQLiteDir(dir string) (string, error) {
	if dir == "" {
		return "", errors.New("missing -sqlite-dir: pass an existing directory")
	}

	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("invalid -sqlite-dir %q: %v", dir, err)
	}

	info, err := os.Stat(abs)
	if err != nil {
		return "", fmt.Errorf("invalid -sqlite-dir %q: %v; create the directory first", dir, err)
	}

	if !info.IsDir() {
		return "", fmt.Errorf("invalid -sqlite-dir %q: not a directory", dir)
	}

	return abs, nil
}

func fail(code int, message string) {
	fmt.Fprintf(os.Stderr, "ferretdb-mltrail: %s\n", message)
	os.Exit(code)
}

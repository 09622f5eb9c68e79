package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/hotswapgo/hotswap/fleet"
)

// registryFlags say how to reach an OCI registry.
type registryFlags struct {
	user      string
	ca        string
	plainHTTP bool
}

func (r *registryFlags) register(cmd *cobra.Command) {
	fs := cmd.Flags()
	fs.StringVar(&r.user, "registry-user", "", "OCI registry user; the password is read from $HOTSWAP_REGISTRY_PASSWORD")
	fs.StringVar(&r.ca, "registry-ca", "", "CA bundle that signs the OCI registry's certificate (PEM)")
	fs.BoolVar(&r.plainHTTP, "plain-http", false, "reach an OCI registry off loopback over plain HTTP (a loopback one always is)")
}

// source returns the fleet.Source the flags describe.
func (r *registryFlags) source() (fleet.Source, error) {
	src := fleet.Source{OCI: fleet.OCIOptions{PlainHTTP: r.plainHTTP}}
	if r.ca != "" {
		pem, err := os.ReadFile(r.ca)
		if err != nil {
			return src, fmt.Errorf("registry CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return src, usageError{fmt.Errorf("--registry-ca %s: no PEM certificate", r.ca)}
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{RootCAs: pool}
		src.HTTPClient = &http.Client{Transport: tr}
	}
	if r.user != "" {
		user, password := r.user, os.Getenv("HOTSWAP_REGISTRY_PASSWORD")
		src.OCI.Credential = func(context.Context, string) (string, string, error) { return user, password, nil }
	}
	return src, nil
}

func newFleetPushCmd() *cobra.Command {
	var (
		reg      registryFlags
		unsigned bool
	)
	cmd := &cobra.Command{
		Use:   "push ARTIFACT oci://HOST[:PORT]/REPO[:TAG]",
		Short: "Push a signed artifact to an OCI registry and print the oci:// URL to set",
		Long: `Push a signed artifact to an OCI registry and print the oci:// URL to set.

ARTIFACT is a payload with its manifest beside it (ARTIFACT.manifest, written by
hotswap sign or hotswap build). Both go to the repository as one OCI manifest of
artifactType ` + fleet.OCIArtifactType + ` (see docs/fleet.md). The
printed URL names that manifest by digest; "hotswap fleet set MODULE=URL" pins
the payload's digest. A registry on loopback is reached over plain HTTP, any
other over HTTPS unless --plain-http.`,
		Args: usageArgs(cobra.ExactArgs(2)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !strings.HasPrefix(args[1], fleet.OCIScheme) {
				return usageError{fmt.Errorf("%q: want oci://HOST[:PORT]/REPO[:TAG]", args[1])}
			}
			src, err := reg.source()
			if err != nil {
				return err
			}
			m, err := src.PushOCI(cmd.Context(), args[0], args[1], unsigned)
			if errors.Is(err, fleet.ErrInvalid) {
				return usageError{err}
			}
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "url     %s\ndigest  %s\n", m.URL, m.Digest)
			if m.Version != "" {
				fmt.Fprintf(w, "version %s\n", m.Version)
			} else {
				fmt.Fprintln(w, "unsigned: only a development host loads it")
			}
			return nil
		},
	}
	reg.register(cmd)
	cmd.Flags().BoolVar(&unsigned, "unsigned", false, "push a payload that has no manifest")
	return cmd
}

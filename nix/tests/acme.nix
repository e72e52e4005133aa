# ACME end to end: pebble from nixpkgs' ACME test server, nginx serving our certificates
# (the node's fqdn, and a second certificate `api` on a name of its own, each on its own
# virtual host),
# a forced renewal changing it and reloading nginx, and the CA down: failure counted, old
# certificate kept. As nixpkgs' own acme tests: the certificate names the node's fqdn,
# which the test server's resolver answers, and pebble's issuing root (new at each start)
# is fetched from its management port.
{ self }:
{
  name = "aistack-acme";

  nodes = {
    # pebble as the CA, with its test DNS (nixpkgs' own ACME tests use this node).
    acme =
      { nodes, pkgs, modulesPath, ... }:
      {
        imports = [ "${modulesPath}/../tests/common/acme/server" ];
        # The test resolver serves every node's extraHosts: the second certificate's name.
        networking.extraHosts = "${nodes.webserver.networking.primaryIPAddress} api.example.test";
      };

    webserver =
      { config, nodes, pkgs, modulesPath, ... }:
      {
        imports = [
          self.nixosModules.default
          "${modulesPath}/../tests/common/acme/client"
        ];
        virtualisation.memorySize = 3072;
        networking.domain = "example.test";
        networking.nameservers = [ nodes.acme.networking.primaryIPAddress ];
        networking.firewall.allowedTCPPorts = [ 80 443 ];
        services.aiStack = {
          enable = true;
          metricsDirectory = "/var/lib/prometheus-node-exporter-text-files";
          validation.enable = true;
          acme = {
            enable = true;
            domains = [ config.networking.fqdn ];
            email = "admin@example.test";
            acceptTerms = true;
            server = "https://${nodes.acme.test-support.acme.caDomain}/dir";
            caBundle = nodes.acme.test-support.acme.caCert;
            nginx.enable = true;
            certs.api.domains = [ "api.example.test" ];
          };
        };
        systemd.tmpfiles.rules = [ "d /var/lib/prometheus-node-exporter-text-files 0755 aistack aistack - -" ];
      };

    client =
      { nodes, pkgs, modulesPath, ... }:
      {
        imports = [ "${modulesPath}/../tests/common/acme/client" ];
        environment.systemPackages = [ pkgs.openssl pkgs.curl ];
        networking.nameservers = [ nodes.acme.networking.primaryIPAddress ];
      };
  };

  testScript =
    { nodes, ... }:
    let
      domain = nodes.webserver.networking.fqdn;
      caDomain = nodes.acme.test-support.acme.caDomain;
      live = "/var/lib/aistack/certs/${domain}";
    in
    ''
      webserver_ip = "${nodes.webserver.networking.primaryIPAddress}"

      served_serial_command = (
          "openssl s_client -connect ${domain}:443 -servername ${domain} </dev/null"
          " 2>/dev/null | openssl x509 -noout -serial"
      )

      def served_serial():
          return client.succeed(served_serial_command).strip()

      def served_serial_after_reload(old):
          # nginx's reload returns before its workers serve the new certificate, and a
          # worker of the old generation may still take a connection while it exits
          # (seen once in the rig): wait for three handshakes in a row that show another.
          new_three_times = " && ".join([f"({served_serial_command} | grep -qv '{old}')"] * 3)
          client.wait_until_succeeds(new_three_times)
          return served_serial()

      def status_from_client(path):
          return client.succeed(
              "curl -s -o /dev/null -w '%{http_code}' --cacert /tmp/pebble-root.pem"
              f" https://${domain}{path}"
          ).strip()

      start_all()
      acme.wait_for_unit("pebble.service")
      acme.wait_for_open_port(443)
      webserver.wait_for_unit("nginx.service")

      with subtest("the placeholder stands before the first issuance"):
          webserver.succeed("test -e ${live}/fullchain.pem")
          placeholder = served_serial()

      with subtest("issue via webroot served by nginx, then nginx serves it"):
          webserver.succeed("systemctl start aistack-acme.service")
          # Matched here, not with `| grep -q`: grep stops reading at its match, and under
          # pipefail the writer's SIGPIPE (exit 141) would fail the command now and then.
          assert "event=acme.renewed" in webserver.succeed("journalctl -u aistack-acme")
          first = served_serial_after_reload(placeholder)
          assert first != placeholder, first
          # pebble makes a new issuing root at each start: fetch it, then verify for real.
          client.succeed("curl --fail -o /tmp/pebble-root.pem https://${caDomain}:15000/roots/0")
          client.succeed("curl --fail --cacert /tmp/pebble-root.pem -o /dev/null https://${domain}/healthz")
          mode = webserver.succeed("stat -c %a ${live}/key.pem").strip()
          assert mode == "640", mode
          webserver.succeed("sudo -u nginx cat ${live}/key.pem > /dev/null")
          webserver.fail("sudo -u nobody cat ${live}/key.pem")

      with subtest("the second certificate has its own files and virtual host"):
          api_names = client.succeed(
              f"openssl s_client -connect {webserver_ip}:443 -servername api.example.test"
              " </dev/null 2>/dev/null | openssl x509 -noout -ext subjectAltName"
          )
          assert "DNS:api.example.test" in api_names and "${domain}" not in api_names, api_names
          client.succeed(
              "curl --fail --cacert /tmp/pebble-root.pem -o /dev/null"
              f" --resolve api.example.test:443:{webserver_ip} https://api.example.test/healthz"
          )
          status = webserver.succeed("aistack-manage acme status")
          assert "api (api.example.test)" in status and "installed: yes" in status, status

      with subtest("only the API routes are public"):
          assert status_from_client("/metrics") == "403"
          assert status_from_client("/readyz") == "403"
          assert status_from_client("/openapi.json") == "403"
          assert status_from_client("/nothing-here") == "404"
          assert "aistack_" in webserver.succeed("curl -sf -k https://127.0.0.1/metrics")

      with subtest("a second run does nothing"):
          webserver.succeed("systemctl start aistack-acme.service")
          assert served_serial() == first

      with subtest("the dry-run unit orders a certificate and keeps nothing"):
          files = "sha256sum /var/lib/aistack/certs/${domain}/*.pem /var/lib/aistack/acme/*.json"
          before = webserver.succeed(files)
          webserver.succeed("systemctl start aistack-acme-dry-run.service")
          assert "event=acme.dry_run_issued" in webserver.succeed("journalctl -u aistack-acme-dry-run")
          assert webserver.succeed(files) == before
          assert served_serial() == first

      with subtest("forced renewal changes the certificate and reloads nginx"):
          webserver.succeed("aistack-manage acme renew --force")
          webserver.succeed(
              "aistack acme reload --config ${nodes.webserver.services.aiStack.configFile} nginx.service"
          )
          second = served_serial_after_reload(first)
          assert second != first, second

      with subtest("the CA down: failure counted, old certificate kept"):
          acme.succeed("systemctl stop pebble.service")
          webserver.fail(
              "aistack-manage acme renew --force --metrics-file"
              " /var/lib/prometheus-node-exporter-text-files/aistack-acme.prom"
          )
          metrics = webserver.succeed("cat /var/lib/prometheus-node-exporter-text-files/aistack-acme.prom")
          assert 'aistack_acme_renewal_failures_total{certificate="${domain}"} 1.0' in metrics, metrics
          assert served_serial() == second

      with subtest("systemd-analyze security"):
          print(webserver.succeed("systemd-analyze security aistack-acme.service"))
    '';
}

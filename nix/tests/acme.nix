# ACME end to end: pebble from nixpkgs' ACME test server, nginx serving our certificate,
# a forced renewal changing it and reloading nginx, and the CA down: failure counted, old
# certificate kept.
{ self }:
{
  name = "aistack-acme";

  nodes = {
    # pebble as the CA, with its test DNS (nixpkgs' own ACME tests use this node).
    acme =
      { nodes, pkgs, ... }:
      {
        imports = [ "${pkgs.path}/nixos/tests/common/acme/server" ];
      };

    webserver =
      { nodes, pkgs, ... }:
      {
        imports = [
          self.nixosModules.default
          "${pkgs.path}/nixos/tests/common/acme/client"
        ];
        virtualisation.memorySize = 3072;
        networking.firewall.allowedTCPPorts = [ 80 443 ];
        services.aiStack = {
          enable = true;
          metricsDirectory = "/var/lib/prometheus-node-exporter-text-files";
          validation.enable = true;
          acme = {
            enable = true;
            domains = [ "a.example.test" ];
            email = "admin@example.test";
            acceptTerms = true;
            server = "https://${nodes.acme.test-support.acme.caDomain}/dir";
            caBundle = nodes.acme.test-support.acme.caCert;
            nginx.enable = true;
          };
        };
        systemd.tmpfiles.rules = [ "d /var/lib/prometheus-node-exporter-text-files 0755 aistack aistack - -" ];
      };

    client =
      { nodes, pkgs, ... }:
      {
        imports = [ "${pkgs.path}/nixos/tests/common/acme/client" ];
        environment.systemPackages = [ pkgs.openssl pkgs.curl ];
      };
  };

  testScript =
    { nodes, ... }:
    ''
      def served_serial():
          return client.succeed(
              "openssl s_client -connect a.example.test:443 -servername a.example.test </dev/null"
              " 2>/dev/null | openssl x509 -noout -serial"
          ).strip()

      start_all()
      acme.wait_for_unit("network-online.target")
      acme.wait_for_unit("pebble.service")
      webserver.wait_for_unit("nginx.service")

      with subtest("the placeholder stands before the first issuance"):
          webserver.succeed("test -e /var/lib/aistack/certs/a.example.test/fullchain.pem")
          placeholder = served_serial()

      with subtest("issue via webroot served by nginx, then nginx serves it"):
          webserver.succeed("systemctl start aistack-acme.service")
          webserver.succeed("journalctl -u aistack-acme | grep -q event=acme.renewed")
          first = served_serial()
          assert first != placeholder, first
          client.succeed("curl --fail -o /dev/null https://a.example.test/healthz")
          mode = webserver.succeed("stat -c %a /var/lib/aistack/certs/a.example.test/key.pem").strip()
          assert mode == "600", mode

      with subtest("a second run does nothing"):
          webserver.succeed("systemctl start aistack-acme.service")
          assert served_serial() == first

      with subtest("forced renewal changes the certificate and reloads nginx"):
          webserver.succeed(
              "sudo -u aistack aistack acme renew --force --config ${nodes.webserver.services.aiStack.configFile}"
          )
          webserver.succeed(
              "aistack acme reload --config ${nodes.webserver.services.aiStack.configFile} nginx.service"
          )
          webserver.wait_until_succeeds("true")
          second = served_serial()
          assert second != first, second

      with subtest("the CA down: failure counted, old certificate kept"):
          acme.succeed("systemctl stop pebble.service")
          webserver.fail(
              "sudo -u aistack aistack acme renew --force --metrics-file"
              " /var/lib/prometheus-node-exporter-text-files/aistack-acme.prom"
              " --config ${nodes.webserver.services.aiStack.configFile}"
          )
          metrics = webserver.succeed("cat /var/lib/prometheus-node-exporter-text-files/aistack-acme.prom")
          assert 'aistack_acme_renewal_failures_total{certificate="a.example.test"} 1.0' in metrics, metrics
          assert served_serial() == second

      with subtest("systemd-analyze security"):
          print(webserver.succeed("systemd-analyze security aistack-acme.service"))
    '';
}

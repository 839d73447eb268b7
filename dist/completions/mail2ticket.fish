# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_mail2ticket_global_optspecs
    string join \n c/config= h/help V/version
end

function __fish_mail2ticket_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_mail2ticket_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_mail2ticket_using_subcommand
    set -l cmd (__fish_mail2ticket_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c mail2ticket -n "__fish_mail2ticket_needs_command" -s c -l config -d 'Configuration file' -r -F
complete -c mail2ticket -n "__fish_mail2ticket_needs_command" -s h -l help -d 'Print help'
complete -c mail2ticket -n "__fish_mail2ticket_needs_command" -s V -l version -d 'Print version'
complete -c mail2ticket -n "__fish_mail2ticket_needs_command" -f -a "run" -d 'Run the daemon until SIGTERM or SIGINT'
complete -c mail2ticket -n "__fish_mail2ticket_needs_command" -f -a "check" -d 'Connect, authenticate and select the folder of each reader (all by default)'
complete -c mail2ticket -n "__fish_mail2ticket_needs_command" -f -a "status" -d 'Show the daemon\'s and each reader\'s health from the database'
complete -c mail2ticket -n "__fish_mail2ticket_needs_command" -f -a "health" -d 'Exit 0 when the running daemon\'s heartbeat is recent, 1 otherwise (for Docker\'s HEALTHCHECK and scripts)'
complete -c mail2ticket -n "__fish_mail2ticket_needs_command" -f -a "quarantine" -d 'Mail set aside whole because it could not be made into a ticket'
complete -c mail2ticket -n "__fish_mail2ticket_needs_command" -f -a "authorize" -d 'Sign in for a reader (grant authorization_code or device_code) and store its refresh token'
complete -c mail2ticket -n "__fish_mail2ticket_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand run" -l once -d 'Poll every reader once, taking everything pending, then exit: 0 if all readers succeeded, 1 if any failed'
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand run" -s h -l help -d 'Print help'
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand check" -s h -l help -d 'Print help'
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand status" -l reader -d 'One reader, with its history (state changes, failures, recoveries), newest first' -r
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand status" -l limit -d 'History rows shown with --reader' -r
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand status" -l json -d 'Print JSON instead of a table'
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand status" -s h -l help -d 'Print help'
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand health" -s h -l help -d 'Print help'
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand quarantine; and not __fish_seen_subcommand_from list show retry drop help" -s h -l help -d 'Print help'
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand quarantine; and not __fish_seen_subcommand_from list show retry drop help" -f -a "list" -d 'The quarantined mails, oldest first, with the reason for each'
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand quarantine; and not __fish_seen_subcommand_from list show retry drop help" -f -a "show" -d 'One quarantined mail: why, who from, and its kept raw mail'
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand quarantine; and not __fish_seen_subcommand_from list show retry drop help" -f -a "retry" -d 'Parse quarantined mail again (e.g. after an upgrade) and make it a ticket; exits 1 if any stays in quarantine'
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand quarantine; and not __fish_seen_subcommand_from list show retry drop help" -f -a "drop" -d 'Take a mail out of the quarantine without a ticket (its row and raw mail are kept, as `ignored: dropped`)'
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand quarantine; and not __fish_seen_subcommand_from list show retry drop help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand quarantine; and __fish_seen_subcommand_from list" -l reader -d 'Only this reader\'s' -r
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand quarantine; and __fish_seen_subcommand_from list" -l json -d 'Print JSON instead of a table'
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand quarantine; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand quarantine; and __fish_seen_subcommand_from show" -l raw -d 'Print the raw mail as it was fetched, nothing else'
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand quarantine; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help'
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand quarantine; and __fish_seen_subcommand_from retry" -l all -d 'Every quarantined mail'
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand quarantine; and __fish_seen_subcommand_from retry" -s h -l help -d 'Print help'
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand quarantine; and __fish_seen_subcommand_from drop" -s h -l help -d 'Print help'
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand quarantine; and __fish_seen_subcommand_from help" -f -a "list" -d 'The quarantined mails, oldest first, with the reason for each'
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand quarantine; and __fish_seen_subcommand_from help" -f -a "show" -d 'One quarantined mail: why, who from, and its kept raw mail'
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand quarantine; and __fish_seen_subcommand_from help" -f -a "retry" -d 'Parse quarantined mail again (e.g. after an upgrade) and make it a ticket; exits 1 if any stays in quarantine'
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand quarantine; and __fish_seen_subcommand_from help" -f -a "drop" -d 'Take a mail out of the quarantine without a ticket (its row and raw mail are kept, as `ignored: dropped`)'
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand quarantine; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand authorize" -l port -d 'Port of the loopback redirect (default: the app\'s redirect_port)' -r
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand authorize" -l timeout -d 'How long to wait for the browser to come back' -r
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand authorize" -l device -d 'Use the device-code flow: sign in on any device with a code'
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand authorize" -l no-listen -d 'Do not listen for the redirect; paste the address the browser was sent to instead (for headless servers)'
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand authorize" -s h -l help -d 'Print help'
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand help; and not __fish_seen_subcommand_from run check status health quarantine authorize help" -f -a "run" -d 'Run the daemon until SIGTERM or SIGINT'
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand help; and not __fish_seen_subcommand_from run check status health quarantine authorize help" -f -a "check" -d 'Connect, authenticate and select the folder of each reader (all by default)'
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand help; and not __fish_seen_subcommand_from run check status health quarantine authorize help" -f -a "status" -d 'Show the daemon\'s and each reader\'s health from the database'
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand help; and not __fish_seen_subcommand_from run check status health quarantine authorize help" -f -a "health" -d 'Exit 0 when the running daemon\'s heartbeat is recent, 1 otherwise (for Docker\'s HEALTHCHECK and scripts)'
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand help; and not __fish_seen_subcommand_from run check status health quarantine authorize help" -f -a "quarantine" -d 'Mail set aside whole because it could not be made into a ticket'
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand help; and not __fish_seen_subcommand_from run check status health quarantine authorize help" -f -a "authorize" -d 'Sign in for a reader (grant authorization_code or device_code) and store its refresh token'
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand help; and not __fish_seen_subcommand_from run check status health quarantine authorize help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand help; and __fish_seen_subcommand_from quarantine" -f -a "list" -d 'The quarantined mails, oldest first, with the reason for each'
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand help; and __fish_seen_subcommand_from quarantine" -f -a "show" -d 'One quarantined mail: why, who from, and its kept raw mail'
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand help; and __fish_seen_subcommand_from quarantine" -f -a "retry" -d 'Parse quarantined mail again (e.g. after an upgrade) and make it a ticket; exits 1 if any stays in quarantine'
complete -c mail2ticket -n "__fish_mail2ticket_using_subcommand help; and __fish_seen_subcommand_from quarantine" -f -a "drop" -d 'Take a mail out of the quarantine without a ticket (its row and raw mail are kept, as `ignored: dropped`)'

//! `labctl jobs work`: the lab bench's interactive mode over the Work stream. New offers appear
//! as they arrive with their lease counting down; one key accepts, declines (with a reason),
//! records the sample or enters results. It reconnects by itself, and says an action is done only
//! once the broker has answered it (see `link`).

mod board;
mod link;
mod screen;

use std::io::IsTerminal as _;
use std::time::Duration;

use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use crossterm::{cursor, execute, terminal};
use tokio::sync::mpsc;

use super::error::{CliError, Subject};
use super::{Ctx, catalogue};
use crate::domain::Timestamp;
use crate::proto;
use board::{Board, Key, Outcome};
use link::Update;

/// How often the countdowns are redrawn.
const TICK: Duration = Duration::from_secs(1);

/// Puts the terminal back however the bench ends.
struct RawTerminal;

impl RawTerminal {
    fn enter() -> Result<Self, CliError> {
        terminal::enable_raw_mode()
            .map_err(|e| CliError::Other(format!("cannot take over the terminal: {e}")))?;
        let guard = Self;
        execute!(
            std::io::stdout(),
            terminal::EnterAlternateScreen,
            cursor::Hide
        )
        .map_err(|e| CliError::Other(format!("cannot take over the terminal: {e}")))?;
        Ok(guard)
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = execute!(
            std::io::stdout(),
            cursor::Show,
            terminal::LeaveAlternateScreen
        );
        let _ = terminal::disable_raw_mode();
    }
}

/// Reads keys on a thread of its own (the terminal read blocks), as bench keys.
fn keys() -> mpsc::UnboundedReceiver<Key> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        while let Ok(ev) = event::read() {
            let Event::Key(k) = ev else { continue };
            if k.kind == KeyEventKind::Release {
                continue;
            }
            let key = match k.code {
                KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => Key::Interrupt,
                KeyCode::Char(c) => Key::Char(c),
                KeyCode::Up => Key::Up,
                KeyCode::Down => Key::Down,
                KeyCode::Enter => Key::Enter,
                KeyCode::Backspace => Key::Backspace,
                KeyCode::Esc => Key::Escape,
                _ => continue,
            };
            if tx.send(key).is_err() {
                return;
            }
        }
    });
    rx
}

/// Runs the bench until the operator quits.
pub(crate) async fn run(ctx: &Ctx) -> Result<(), CliError> {
    if !std::io::stdin().is_terminal() || !std::io::stdout().is_terminal() {
        return Err(CliError::Usage(
            "`jobs work` is interactive and needs a terminal; scripts use `labctl offers watch` \
             and `labctl jobs accept|decline|receive|result`"
                .into(),
        ));
    }
    // Who, and the catalogue for checking results, before the screen is taken.
    let client = ctx.connect().await?;
    let me = client
        .labs()
        .who_am_i(proto::WhoAmIRequest {})
        .await
        .map_err(|s| ctx.status(&s, Subject::Other))?
        .into_inner();
    let catalogue = catalogue::fetch(ctx, &client).await?;
    let (actions, mut updates) = link::start(ctx).await?;
    let header = screen::Header {
        lab: me.organisation,
        name: me.name,
        addr: ctx.settings.addr.value.clone(),
    };
    let mut board = Board::new(catalogue, Timestamp::now());
    let _terminal = RawTerminal::enter()?;
    let mut keys = keys();
    let mut ticks = tokio::time::interval(TICK);
    let mut stdout = std::io::stdout();
    loop {
        let now = Timestamp::now();
        let (width, height) = terminal::size().unwrap_or((100, 30));
        let lines = screen::lines(&board, &header, now, usize::from(height));
        screen::draw(&mut stdout, &lines, usize::from(width))
            .map_err(|e| CliError::Other(format!("cannot draw: {e}")))?;
        tokio::select! {
            _ = ticks.tick() => {}
            key = keys.recv() => {
                let Some(key) = key else { return Ok(()) };
                match board.key(Timestamp::now(), key) {
                    Outcome::Nothing => {}
                    Outcome::Quit => return Ok(()),
                    Outcome::Send(tag, action) => {
                        if actions.send((tag, action)).await.is_err() {
                            return Err(CliError::Other("the connection task stopped".into()));
                        }
                    }
                }
            }
            update = updates.recv() => {
                let now = Timestamp::now();
                match update {
                    None => return Err(CliError::Other("the connection task stopped".into())),
                    Some(Update::Event(e)) => board.event(e),
                    Some(Update::Done { tag, job }) => board.done(now, tag, job),
                    Some(Update::Refused { tag, why }) => board.refused(now, tag, &why),
                    Some(Update::Down(why)) => {
                        board.note(now, format!("lost the connection ({why}); reconnecting"));
                        board.connected = Err(why);
                    }
                    Some(Update::Up) => {
                        if board.connected.is_err() {
                            board.note(now, "reconnected");
                        }
                        board.connected = Ok(());
                    }
                    Some(Update::Fatal(e)) => return Err(e),
                }
            }
        }
    }
}

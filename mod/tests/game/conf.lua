-- LÖVE configuration of the game-layout harness: headless (no window, no
-- graphics, no audio), so it runs on a CI machine; the save folder is
-- $XDG_DATA_HOME/love/BalatroHarness, which the tests point at a temp folder.
function love.conf(t)
  t.identity = "BalatroHarness"
  t.version = "11.4"
  t.console = false
  t.window = false
  t.modules.window = false
  t.modules.graphics = false
  t.modules.audio = false
  t.modules.sound = false
  t.modules.joystick = false
  t.modules.physics = false
  t.modules.video = false
  t.modules.font = false
  t.modules.image = false
  t.modules.mouse = false
  t.modules.keyboard = false
  t.modules.touch = false
end
